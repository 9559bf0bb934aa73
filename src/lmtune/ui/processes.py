"""Runs started from the web UI: each is its own `lmtune train` process, detached from the UI
server (a new session), writing only to its run directory; its console output goes to a file,
never to a pipe someone must read (a training that blocks on a full pipe when the browser or the
UI server goes away is what LLaMA-Factory's board did, #8485 #8817). Closing the page or
restarting the UI server never stops a run; the run list is read from disk again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from lmtune.atomic import write_json_atomic
from lmtune.errors import ConfigError
from lmtune.run_dir import RUNNING, RunDir, runs_under

LOGS = ".ui-logs"  # under the runs directory: a run directory must be empty before `lmtune train` makes it
EXPORTS = ".ui-exports"  # exports made from the page


def console_log(runs_dir: Path, name: str) -> Path:
    return runs_dir / LOGS / f"{name}.log"


QUEUE = ".ui-queue"  # runs waiting for a free slot, one JSON file each: a restarted UI finds them again
_spawned: dict[Path, tuple[subprocess.Popen, float]] = {}  # trainings started by this server, counted before their status.json exists


def running_runs(runs_dir: Path) -> list[RunDir]:
    return [run for run in runs_under(runs_dir) if run.status().state == RUNNING]


def busy_names(runs_dir: Path) -> set[str]:
    """The runs training now: those whose status says so, and those this server has just started
    (a new process needs seconds to import torch and write its status)."""
    for out, (process, spawned_at) in list(_spawned.items()):
        status = RunDir(out).status() if RunDir(out).is_run() else None
        ended = status is not None and status.state != RUNNING and (status.updated or 0) >= spawned_at
        if process.poll() is not None or ended:  # exited, or ended and only tidying up
            del _spawned[out]
    return {run.path.name for run in running_runs(runs_dir)} | {out.name for out in _spawned if out.parent == runs_dir}


def spawn(command: list[str], log: Path) -> subprocess.Popen:
    """`python -m lmtune ...` in a new session, its output appended to `log`, no pipe to read."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "lmtune", *command], stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def queued(runs_dir: Path) -> list[dict]:
    """The waiting runs, oldest first: {name, config, resume, position}."""
    folder = runs_dir / QUEUE
    entries = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [{**json.loads(path.read_text(encoding="utf-8")), "position": i + 1} for i, path in enumerate(entries)]


def submit(runs_dir: Path, config: Path, name: str, resume: bool = False, max_running: int = 1) -> str:
    """Queue `lmtune train CONFIG --output-dir RUNS/NAME [--resume]` and start it when a slot is free
    (this machine trains max_running runs at once). Returns "started" or "queued (position N)"."""
    if name in busy_names(runs_dir) or any(q["name"] == name for q in queued(runs_dir)):
        raise ConfigError(f"{name} is already running or queued")
    folder = runs_dir / QUEUE
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"name": name, "config": str(config), "resume": resume}
    write_json_atomic(folder / f"{time.time_ns():020d}-{name}.json", entry)
    start_queued(runs_dir, max_running)
    waiting = [q for q in queued(runs_dir) if q["name"] == name]
    return f"queued (position {waiting[0]['position']})" if waiting else "started"


def start_queued(runs_dir: Path, max_running: int) -> list[str]:
    """Start the oldest waiting runs while fewer than max_running train."""
    started = []
    folder = runs_dir / QUEUE
    # The queue is looked at first: the server calls this every 2 s, and busy_names reads every run's status.
    while (entries := sorted(folder.glob("*.json")) if folder.is_dir() else []) and len(busy_names(runs_dir)) < max_running:
        entry = json.loads(entries[0].read_text(encoding="utf-8"))
        entries[0].unlink()
        out = runs_dir / entry["name"]
        process = spawn(["train", entry["config"], "--output-dir", str(out), *(["--resume"] if entry["resume"] else [])],
                        console_log(runs_dir, entry["name"]))
        _spawned[out] = (process, time.time())
        started.append(entry["name"])
    return started


def unqueue(runs_dir: Path, name: str) -> bool:
    """Take a waiting run out of the queue (nothing of it was written yet)."""
    for path in sorted((runs_dir / QUEUE).glob(f"*-{name}.json")) if (runs_dir / QUEUE).is_dir() else []:
        if json.loads(path.read_text(encoding="utf-8"))["name"] == name:
            path.unlink()
            return True
    return False


def start_export(runs_dir: Path, run: RunDir, fmt: str, quant: str) -> Path:
    """`lmtune export RUN RUNS/.ui-exports/NAME-FORMAT` in its own process; its output in a log file."""
    name = f"{run.path.name}-{fmt}" + (f"-{quant}" if fmt == "gguf" else "")
    out = runs_dir / EXPORTS / name
    if out.exists():
        raise ConfigError(f"{out} exists already: the export was made (or is being made)")
    spawn(["export", str(run.path), str(out), "--format", fmt, *(["--quant", quant] if fmt == "gguf" else [])],
          console_log(runs_dir, f"{name}.export"))
    return out


def stop_training(run: RunDir) -> Optional[int]:
    """SIGTERM to the run's process (it saves a checkpoint at the end of the step and stops)."""
    status = run.status()
    if status.state != RUNNING or not status.pid:
        return None
    if status.host and status.host != socket.gethostname():
        raise ConfigError(f"{run.path.name} runs on {status.host}; stop it there")
    os.kill(status.pid, signal.SIGTERM)
    return status.pid
