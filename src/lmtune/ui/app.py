"""`lmtune ui`: a web page over the runs directory (FastAPI, Jinja2 templates, htmx, uPlot, all
served from this package: no CDN, no build step). Everything it shows is read from the run
directories (status.json, events.jsonl, metrics.json, bench/), so it shows what the CLI did, and a
restarted UI finds its runs again. New runs are `lmtune train` processes of their own (processes.py).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from lmtune.config import load_config
from lmtune.errors import LmtuneError
from lmtune.infer.serve import install_error_handlers, openai_router
from lmtune.run_dir import FAILED, FINISHED, INTERRUPTED, RunDir, runs_under
from lmtune.ui.processes import EXPORTS, console_log, start_export, start_training, stop_training

HERE = Path(__file__).parent
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ENDED = (FINISHED, FAILED, INTERRUPTED)


class RunEngines(dict):
    """model id (a run's name) -> its engine, loaded the first time a chat asks for it: the UI
    chats through the same OpenAI-compatible router as `lmtune serve`."""

    def __init__(self, runs_root: Path):
        super().__init__()
        self.runs_root = runs_root

    def get(self, name, default=None):
        if name not in self and NAME.match(name or "") and RunDir(self.runs_root / name).status().state == FINISHED:
            from lmtune.infer.load import load_engines

            self.update(load_engines([str(self.runs_root / name)]))
        return super().get(name, default)


def override_lines(text: str) -> list[str]:
    """The form's overrides: one `key.sub=value` a line, blank lines ignored."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_ui(runs_dir: str | Path = "runs", configs_dir: str | Path = "configs", token: Optional[str] = None,
             max_running: int = 1):
    runs_root, configs_root = Path(runs_dir), Path(configs_dir)
    app = FastAPI(title="lmtune ui")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    install_error_handlers(app)
    app.include_router(openai_router(RunEngines(runs_root)))  # chat with a finished run (the token guards it too)
    pages = Jinja2Templates(directory=HERE / "templates")

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        """With --token, every request carries it: ?token= once (kept in a cookie), or a Bearer header."""
        if token is None or request.url.path.startswith("/static/"):
            return await call_next(request)
        given = (request.query_params.get("token") or request.cookies.get("lmtune_token")
                 or request.headers.get("authorization", "").removeprefix("Bearer "))
        if not secrets.compare_digest(given or "", token):
            return JSONResponse({"error": "this lmtune ui needs its token: open the address it printed (?token=...)"},
                                status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie("lmtune_token", token, httponly=True, samesite="strict")
        return response

    def run_of(name: str) -> RunDir:
        run = RunDir(runs_root / name)
        if not NAME.match(name) or not run.is_run():
            raise HTTPException(404, f"no run {name!r} under {runs_root}")
        return run

    def summaries() -> list[dict]:
        rows = []
        for run in runs_under(runs_root):
            try:
                rows.append(run.summary())
            except LmtuneError as e:  # a damaged run is listed with its problem, not hidden
                rows.append({"name": run.path.name, "state": "unreadable", "error": str(e), "metrics": {}})
        return sorted(rows, key=lambda s: s.get("updated") or 0, reverse=True)

    @app.get("/", response_class=HTMLResponse)
    async def runs_page(request: Request):
        return pages.TemplateResponse(request, "runs.html", {"runs_dir": str(runs_root)})

    @app.get("/runs-table", response_class=HTMLResponse)
    async def runs_table(request: Request):
        return pages.TemplateResponse(request, "runs_table.html", {"runs": summaries()})

    @app.get("/api/runs")
    async def runs_json():
        return summaries()

    def console_tail(name: str) -> str:
        log = console_log(runs_root, name)
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]) if log.is_file() else ""

    @app.get("/runs/{name}", response_class=HTMLResponse)
    async def run_page(request: Request, name: str, message: str = ""):
        if NAME.match(name) and not RunDir(runs_root / name).is_run() and console_log(runs_root, name).is_file():
            # Started from this page a moment ago: `lmtune train` is still reading its data and making the directory.
            return pages.TemplateResponse(request, "starting.html", {"name": name, "tail": console_tail(name)})
        run = run_of(name)
        status = run.status()
        return pages.TemplateResponse(request, "run.html", {
            "name": name, "status": status, "metrics": run.metrics(), "bench": run.bench(), "message": message,
            "config": run.config_file.read_text(encoding="utf-8"), "tail": console_tail(name), "ended": status.state in ENDED,
            "exports": exports_of(name)})

    @app.get("/runs/{name}/events")
    async def run_events(request: Request, name: str):
        """events.jsonl as server-sent events: what is there, then each new line, until the run ends."""
        run = run_of(name)

        async def stream():
            offset = 0  # bytes of events.jsonl sent: each poll reads only what was appended since
            while True:
                new = b""
                if run.events_file.is_file():
                    with open(run.events_file, "rb") as f:
                        f.seek(offset)
                        new = f.read()
                complete = new[: new.rfind(b"\n") + 1]  # a line being written is sent when it is whole
                offset += len(complete)
                for line in complete.decode("utf-8").splitlines():
                    yield f"data: {line}\n\n"
                if run.status().state in ENDED and len(complete) == len(new):
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/runs/{name}/stop")
    async def stop(name: str):
        pid = stop_training(run_of(name))
        message = "asked to stop: it saves a checkpoint at the end of the step" if pid else "not running"
        return RedirectResponse(f"/runs/{name}?message={message}", status_code=303)

    @app.post("/runs/{name}/resume")
    async def resume(name: str):
        run = run_of(name)
        try:
            start_training(runs_root, run.config_file, name, [], resume=True, max_running=max_running)
            message = "resumed"
        except LmtuneError as e:
            message = str(e)
        return RedirectResponse(f"/runs/{name}?message={message}", status_code=303)

    @app.post("/runs/{name}/export")
    async def export(name: str, format: str = Form("safetensors"), quant: str = Form("q8_0")):
        run = run_of(name)
        if format not in ("safetensors", "gguf") or not re.match(r"^[a-z0-9_]+$", quant):
            raise HTTPException(400, "format: safetensors or gguf")
        try:
            out = start_export(runs_root, run, format, quant)
            message = f"exporting to {out}; the page lists it when it is written"
        except LmtuneError as e:
            message = str(e)
        return RedirectResponse(f"/runs/{name}?message={message}", status_code=303)

    def exports_of(name: str) -> list[dict]:
        """What was exported from this run, each with its log's last line (done, or the error)."""
        folder = runs_root / EXPORTS
        found = []
        for path in sorted(folder.glob(f"{name}-*")) if folder.is_dir() else []:
            log = console_log(runs_root, f"{path.name}.export")
            lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.is_file() else []
            found.append({"path": str(path), "last": lines[-1] if lines else ""})
        return found

    @app.get("/compare", response_class=HTMLResponse)
    async def compare(request: Request, run: list[str] = Query(default=[])):
        """The chosen runs' loss curves on one chart (from log.jsonl) and their metrics side by side."""
        chosen = [run_of(name) for name in dict.fromkeys(run)]
        curves = {r.path.name: [(rec["step"], rec["loss"]) for rec in (r.log() if r.log_file.is_file() else []) if "loss" in rec]
                  for r in chosen}
        metrics = {r.path.name: r.metrics().get("final") or {} for r in chosen}
        names = list(dict.fromkeys(k for m in metrics.values() for k in m))
        return pages.TemplateResponse(request, "compare.html", {"curves": curves, "metrics": metrics, "names": names})

    def configs() -> list[str]:
        return sorted(p.name for p in configs_root.glob("*.yaml")) if configs_root.is_dir() else []

    @app.get("/new", response_class=HTMLResponse)
    async def new_page(request: Request):
        return pages.TemplateResponse(request, "new.html", {"configs": configs(), "error": None, "form": {}})

    @app.post("/new", response_class=HTMLResponse)
    async def new_run(request: Request, config: str = Form(...), name: str = Form(...), overrides: str = Form("")):
        form = {"config": config, "name": name, "overrides": overrides}

        def again(error: str):
            return pages.TemplateResponse(request, "new.html", {"configs": configs(), "error": error, "form": form},
                                          status_code=400)

        if config not in configs():
            return again(f"no config {config!r} in {configs_root}")
        if not NAME.match(name):
            return again("the run name: letters, digits, '.', '_' and '-'")
        if (runs_root / name).exists():
            return again(f"{runs_root / name} exists already; choose another name")
        lines = override_lines(overrides)
        try:
            load_config(configs_root / config, lines)  # the CLI's own checks and messages, before anything starts
            start_training(runs_root, configs_root / config, name, lines, max_running=max_running)
        except (LmtuneError, ValueError) as e:
            return again(str(e))
        return RedirectResponse(f"/runs/{name}", status_code=303)

    @app.get("/new/command", response_class=HTMLResponse)
    async def new_command(config: str = "", name: str = "", overrides: str = ""):
        """The exact command the form will run, for copying."""
        import html
        import shlex

        command = shlex.join(["lmtune", "train", str(configs_root / config), "--output-dir", str(runs_root / name),
                              *override_lines(overrides)])
        return f"<code>{html.escape(command)}</code>"

    app.state.runs_dir = runs_root
    return app
