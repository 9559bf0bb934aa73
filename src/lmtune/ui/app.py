"""`lmtune ui`: a web page over the runs directory (FastAPI, Jinja2 templates, htmx, uPlot, all
served from this package: no CDN, no build step). Everything it shows is read from the run
directories (status.json, events.jsonl, metrics.json, bench/), so it shows what the CLI did, and a
restarted UI finds its runs again. New runs are `lmtune train` processes of their own (processes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import secrets
import shlex
import tempfile
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import urlencode

from fastapi import FastAPI, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from lmtune.atomic import write_text_atomic
from lmtune.config import load_config
from lmtune.errors import LmtuneError
from lmtune.infer.serve import install_error_handlers, openai_router
from lmtune.run_dir import FAILED, FINISHED, INTERRUPTED, RunDir, runs_under
from lmtune.ui.config_form import check_form, config_yaml, form_fields, switched, values_of
from lmtune.ui.processes import (EXPORTS, console_log, queued, start_export, start_queued, stop_training, submit,
                                 unqueue)

HERE = Path(__file__).parent
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ENDED = (FINISHED, FAILED, INTERRUPTED)
CONFIGS = ".ui-configs"  # the YAML of each run started from the form (its run directory must be empty until it starts)
CONFUSION = "confusion_matrix.png"  # written by the classification-head task at its final evaluation
BASE = "@base"  # chat model id suffix: NAME@base is NAME's base model, prompted with NAME's template


class RunEngines(dict):
    """model id (a run's name, or NAME@base for its base model) -> its engine, loaded the first time a
    chat asks for it: the UI chats through the same OpenAI-compatible router as `lmtune serve`."""

    def __init__(self, runs_root: Path):
        super().__init__()
        self.runs_root = runs_root

    def get(self, name, default=None):
        run_name = (name or "").removesuffix(BASE)
        if name not in self and NAME.match(run_name) and RunDir(self.runs_root / run_name).status().state == FINISHED:
            from lmtune.infer.load import base_engine, load_engines

            if name.endswith(BASE):  # the model the run started from, asked the way the run is asked
                tuned = self.get(run_name)
                base = base_engine(RunDir(self.runs_root / run_name).config().model.name)
                base.renderer = tuned.renderer
                self[name] = base
            else:
                self.update(load_engines([str(self.runs_root / name)]))
        return super().get(name, default)


def to_run(name: str, message: str) -> RedirectResponse:
    """Back to the run's page, with a line saying what happened."""
    return RedirectResponse(f"/runs/{name}?{urlencode({'message': message})}", status_code=303)


def build_ui(runs_dir: str | Path = "runs", configs_dir: str | Path = "configs", token: Optional[str] = None,
             max_running: int = 1):
    runs_root, configs_root = Path(runs_dir), Path(configs_dir)
    planning = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        """Start queued runs as slots free up, for as long as the server runs (the queue is on disk:
        a restarted server goes on with it)."""
        async def keep_starting():
            while True:
                start_queued(runs_root, max_running)
                await asyncio.sleep(2)

        task = asyncio.create_task(keep_starting())
        yield
        task.cancel()

    app = FastAPI(title="lmtune ui", lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    install_error_handlers(app)
    app.state.engines = RunEngines(runs_root)
    app.include_router(openai_router(app.state.engines))  # chat with a finished run (the token guards it too)
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
        rows = [{"name": q["name"], "state": "queued", "position": q["position"], "metrics": {}} for q in queued(runs_root)]
        for run in runs_under(runs_root):
            try:
                rows.append(run.summary())
            except LmtuneError as e:  # a damaged run is listed with its problem, not hidden
                rows.append({"name": run.path.name, "state": "unreadable", "error": str(e), "metrics": {}})
        return sorted(rows, key=lambda s: (s["state"] == "queued", s.get("updated") or 0), reverse=True)

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
        waiting = [q for q in queued(runs_root) if q["name"] == name]
        if NAME.match(name) and not RunDir(runs_root / name).is_run() and (waiting or console_log(runs_root, name).is_file()):
            # Queued, or started a moment ago: `lmtune train` is still reading its data and making the directory.
            return pages.TemplateResponse(request, "starting.html", {"name": name, "tail": console_tail(name),
                                                                     "queued": waiting[0] if waiting else None})
        run = run_of(name)
        status = run.status()
        return pages.TemplateResponse(request, "run.html", {
            "name": name, "status": status, "metrics": run.metrics(), "bench": run.bench(), "message": message,
            "config": run.config_file.read_text(encoding="utf-8"), "tail": console_tail(name), "ended": status.state in ENDED,
            "exports": exports_of(name), "base_model": base_model_of(run),
            "confusion": (run.path / CONFUSION).is_file()})

    @app.get(f"/runs/{{name}}/{CONFUSION}")
    async def confusion_matrix(name: str):
        path = run_of(name).path / CONFUSION
        if not path.is_file():
            raise HTTPException(404, f"{name} has no confusion matrix (a classification head run writes one)")
        return FileResponse(path, media_type="image/png")

    def base_model_of(run: RunDir) -> str:
        try:
            return run.config().model.name
        except LmtuneError:
            return "the base model"

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
        return to_run(name, message)

    @app.post("/runs/{name}/resume")
    async def resume(name: str):
        run = run_of(name)
        try:
            message = submit(runs_root, run.config_file, name, resume=True, max_running=max_running)
            message = "resumed" if message == "started" else f"resume {message}"
        except LmtuneError as e:
            message = str(e)
        return to_run(name, message)

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
        return to_run(name, message)

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

    def new_form(request: Request, values: dict, name: str = "", errors: dict = {}, general: list = (),
                 source: str = "", status_code: int = 200):
        return pages.TemplateResponse(request, "new.html", {
            "configs": configs(), "sections": form_fields(values, errors), "general": list(general), "name": name,
            "source": source}, status_code=status_code)

    def loaded_values(path: Optional[Path]) -> tuple[dict, list]:
        try:
            return values_of(load_config(path)), []
        except LmtuneError as e:
            return values_of(load_config(None)), [str(e)]

    @app.get("/new", response_class=HTMLResponse)
    async def new_page(request: Request, config: str = ""):
        """The form, filled from a config in the configs directory (the first one by default)."""
        config = config or next(iter(configs()), "")
        if config and config not in configs():
            raise HTTPException(404, f"no config {config!r} in {configs_root}")
        values, general = loaded_values(configs_root / config if config else None)
        return new_form(request, values, general=general, source=config)

    @app.post("/new/upload", response_class=HTMLResponse)
    async def upload(request: Request, file: UploadFile):
        """The form, filled from an uploaded YAML (checked with the CLI's messages, never run as is)."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(file.filename or "uploaded.yaml").name
            path.write_bytes(await file.read())
            values, general = loaded_values(path)
        return new_form(request, values, general=general, source=path.name, status_code=400 if general else 200)

    async def form_values(request: Request) -> tuple[dict, str]:
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str) and k != "run_name"}
        return values, str(form.get("run_name", "")).strip()

    @app.post("/new/fields", response_class=HTMLResponse)
    async def new_fields(request: Request):
        """The fields again after method.name or task.name changed: that section's own keys and defaults."""
        values, _ = await form_values(request)
        changed = request.headers.get("HX-Trigger-Name", "")
        if changed in ("method.name", "task.name"):
            values = switched(values, changed.split(".")[0])
        return pages.TemplateResponse(request, "new_fields.html", {"sections": form_fields(values)})

    def run_files(name: str) -> tuple[Path, list[str]]:
        config = runs_root / CONFIGS / f"{name or 'NAME'}.yaml"
        return config, ["lmtune", "train", str(config), "--output-dir", str(runs_root / (name or "NAME"))]

    @app.post("/new/check", response_class=HTMLResponse)
    async def new_check(request: Request):
        """Live: the problems the CLI would report, or the exact command and YAML the form will run."""
        values, name = await form_values(request)
        cfg, errors, general = check_form(values)
        _, command = run_files(name)
        return pages.TemplateResponse(request, "new_check.html", {
            "problems": [*errors.values(), *general], "command": shlex.join(command),
            "yaml": config_yaml(cfg) if cfg else ""})

    def captured(show) -> str:
        """What a CLI command prints (a rich Console's output), as HTML with its colours."""
        from rich.console import Console

        out = Console(record=True, file=io.StringIO(), width=150, color_system="truecolor")
        try:
            show(out)
        except (LmtuneError, OSError, ValueError) as e:
            out.print(str(e), style="red", markup=False)  # a message may hold [brackets]
        return out.export_html(inline_styles=True, code_format='<pre class="rich">{code}</pre>')

    async def live_output(request: Request, what: str, show) -> str:
        """A CLI command's output for the form's config (show(cfg, console)), once the config is valid."""
        values, _ = await form_values(request)
        cfg, _, _ = check_form(values)
        if cfg is None:
            return f"<p>The {what} appears once the config is valid.</p>"
        return await asyncio.to_thread(captured, lambda out: show(cfg, out))

    @app.post("/new/plan", response_class=HTMLResponse)
    async def new_plan(request: Request):
        """Live `lmtune plan` of the form's config: memory, time, whether it fits and what would."""
        from lmtune.plan.command import plan

        def show(cfg, out):
            with planning:  # one measurement at a time: they would time each other
                plan(cfg, console=out)

        return await live_output(request, "estimate", show)

    @app.post("/new/data", response_class=HTMLResponse)
    async def new_data(request: Request):
        """Live `lmtune data`: the rows as the model reads them, the trained-on tokens highlighted."""
        from lmtune.plan.preview import preview

        return await live_output(request, "preview", lambda cfg, out: preview(cfg, rows=3, console=out))

    @app.post("/new", response_class=HTMLResponse)
    async def new_run(request: Request):
        values, name = await form_values(request)
        cfg, errors, general = check_form(values)
        if not NAME.match(name):
            general.insert(0, "the run name: letters, digits, '.', '_' and '-'")
        elif (runs_root / name).exists() or any(q["name"] == name for q in queued(runs_root)):
            general.insert(0, f"{runs_root / name} exists already; choose another name")
        if cfg is None or general:
            return new_form(request, values, name, errors, general, status_code=400)
        config, _ = run_files(name)
        config.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(config, config_yaml(cfg))
        try:
            message = submit(runs_root, config, name, max_running=max_running)
        except LmtuneError as e:
            return new_form(request, values, name, general=[str(e)], status_code=400)
        return to_run(name, message)

    @app.post("/queue/{name}/remove")
    async def remove_from_queue(name: str):
        unqueue(runs_root, name)
        return RedirectResponse("/", status_code=303)

    app.state.runs_dir = runs_root
    return app
