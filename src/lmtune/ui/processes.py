"""Runs started from the web UI: each is its own `lmtune train` process, detached from the UI
server (a new session), writing only to its run directory; its console output goes to a file,
never to a pipe someone must read (a training that blocks on a full pipe when the browser or the
UI server goes away is what LLaMA-Factory's board did, #8485 #8817). Closing the page or
restarting the UI server never stops a run; the run list is read from disk again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from lmtune.errors import ConfigError
from lmtune.run_dir import RUNNING, RunDir, runs_under

LOGS = ".ui-logs"  # under the runs directory: a run directory must be empty before `lmtune train` makes it
EXPORTS = ".ui-exports"  # exports made from the page


def console_log(runs_dir: Path, name: str) -> Path:
    return runs_dir / LOGS / f"{name}.log"


def running_runs(runs_dir: Path) -> list[RunDir]:
    return [run for run in runs_under(runs_dir) if run.status().state == RUNNING]


def spawn(command: list[str], log: Path) -> None:
    """`python -m lmtune ...` in a new session, its output appended to `log`, no pipe to read."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        subprocess.Popen([sys.executable, "-m", "lmtune", *command], stdin=subprocess.DEVNULL, stdout=sink,
                         stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def start_training(runs_dir: Path, config: Path, name: str, overrides: list[str], resume: bool = False,
                   max_running: int = 1) -> Path:
    """`lmtune train CONFIG --output-dir RUNS/NAME [overrides] [--resume]` in its own process."""
    busy = running_runs(runs_dir)
    if len(busy) >= max_running:
        raise ConfigError(f"{busy[0].path.name} is still running; this machine trains {max_running} run at a time "
                          "(lmtune ui --max-running N)")
    out = runs_dir / name
    spawn(["train", str(config), "--output-dir", str(out), *overrides, *(["--resume"] if resume else [])],
          console_log(runs_dir, name))
    return out


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
