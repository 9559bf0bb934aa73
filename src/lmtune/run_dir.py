"""A run directory: its layout, its readers, its atomic writers and its status.

Everything that reads or writes a run's files goes through RunDir, so the layout is written down
once and a run list (the web UI, `lmtune runs`) can be built from disk alone:

    config.yaml      the resolved config (enough to reproduce the run)
    status.json      running / finished / interrupted / failed, the step reached, the error
    events.jsonl     what happened, one JSON object a line (docs/training.md lists the events)
    log.jsonl        one line per logging step (loss, learning rate, evaluation metrics)
    metrics.json     zero_shot, final, train, best, saved, data (and interrupted, bench)
    bench/<task>.json  benchmark results (`lmtune bench`, train.bench_after)
    loss.png         the curves of log.jsonl
    checkpoints/     checkpoint-N/ (complete ones only; see train/checkpoint.py)
    adapter/ | model/  the trained weights with the tokenizer
    tensorboard/     when train.report_to has tensorboard
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from lmtune.atomic import append_line, remove_tree, save_dir_atomic, writable_parent, write_json_atomic, write_text_atomic
from lmtune.config import Config, config_to_yaml, load_config
from lmtune.errors import ConfigError

RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"
WEIGHTS = ("adapter", "model")  # PEFT methods save an adapter; full fine-tuning and freeze a model


@dataclass
class Status:
    state: str  # running, finished, interrupted or failed
    run_id: str = ""
    step: int = 0  # the last optimizer step reached
    error: Optional[str] = None  # failed: the error, in full
    pid: Optional[int] = None
    host: Optional[str] = None
    started: Optional[float] = None
    updated: Optional[float] = None
    extra: dict = field(default_factory=dict)


class RunDir:
    CONFIG, STATUS, EVENTS, LOG, METRICS, PLOT = "config.yaml", "status.json", "events.jsonl", "log.jsonl", "metrics.json", "loss.png"
    CHECKPOINTS, TENSORBOARD = "checkpoints", "tensorboard"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- layout -------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def log_file(self) -> Path:
        return self.path / self.LOG

    @property
    def events_file(self) -> Path:
        return self.path / self.EVENTS

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def plot_file(self) -> Path:
        return self.path / self.PLOT

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def weights_dir(self) -> Optional[Path]:
        """adapter/ or model/, when the run saved its weights."""
        return next((self.path / d for d in WEIGHTS if (self.path / d).is_dir()), None)

    def is_run(self) -> bool:
        return self.config_file.is_file()

    # --- opening and creating -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (one with config.yaml), or a one-line error."""
        run = cls(path)
        if not run.is_run():
            raise ConfigError(f"{run.path}: not an lmtune run directory (no config.yaml)")
        return run

    @classmethod
    def create(cls, path: str | Path, overwrite: bool) -> "RunDir":
        """A new, empty run directory. With overwrite, an earlier run there is moved aside whole and
        removed before anything is written, so two runs never mix; a directory whose run never
        reached its first step is reused without asking."""
        run = cls(path)
        out = run.path
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output.dir: {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            if run.is_alive():
                raise ConfigError(f"output.dir: {out} is a run still in progress (pid {run.status().pid}); stop it first "
                                  "or choose another directory")
            if not run.never_started():
                if not overwrite:
                    raise ConfigError(f"output.dir: {out} is not empty; choose another directory or set output.overwrite=true")
                if not run.is_run():
                    raise ConfigError(f"output.dir: {out} holds files that lmtune did not write (no config.yaml); "
                                      "output.overwrite only replaces an earlier lmtune run: choose another directory")
            remove_tree(out)
        writable_parent(out, "output.dir")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"output.dir: cannot create {out} ({e.strerror}); choose another location") from None
        return run

    def never_started(self) -> bool:
        """Only the files of a run that stopped before its first step (a bad setting found after
        the directory was made): nothing in it is worth keeping."""
        if not self.is_run() or self.weights_dir() is not None or self.log_file.is_file():
            return False
        if self.checkpoints.is_dir() and any(self.checkpoints.iterdir()):
            return False
        status = self.status()
        return status.step == 0 and status.state != RUNNING

    # --- readers ------------------------------------------------------------------------------
    def raw_config(self) -> dict:
        """config.yaml as written, for comparing two configs key by key."""
        text = read_text(self.config_file)
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError:
            raw = None
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.config_file}: damaged (not a YAML mapping); this run cannot be read")
        return raw

    def config(self) -> Config:
        if not self.is_run():
            raise ConfigError(f"{self.path}: not an lmtune run directory (no config.yaml)")
        return load_config(self.config_file)

    def metrics(self) -> dict:
        return read_json(self.metrics_file) if self.metrics_file.is_file() else {}

    def log(self) -> list[dict]:
        """The records of log.jsonl; a line cut by a kill at the end is skipped."""
        if not self.log_file.is_file():
            raise ConfigError(f"{self.path}: no log.jsonl here; give a run directory written by lmtune train")
        return read_jsonl(self.log_file)

    def events(self, since: int = 0) -> list[dict]:
        """The events from the `since`-th on (a follower passes how many it has already read)."""
        return read_jsonl(self.events_file)[since:] if self.events_file.is_file() else []

    def status(self) -> Status:
        """The run's state. A run whose status says running but whose process is gone (killed, or
        the machine restarted) is reported as interrupted."""
        path = self.file(self.STATUS)
        if not path.is_file():
            return self._status_of_older_run()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            status = Status(**{k: v for k, v in raw.items() if k in Status.__dataclass_fields__})
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
            raise ConfigError(f"{path}: damaged (not the JSON lmtune writes); this run's state cannot be read") from None
        if status.state == RUNNING and not self._process_alive(status):
            status.state = INTERRUPTED
            status.error = status.error or "the training process ended without saying why (killed?)"
        return status

    def is_alive(self) -> bool:
        path = self.file(self.STATUS)
        if not path.is_file():
            return False
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return raw.get("state") == RUNNING and self._process_alive(Status(**{k: v for k, v in raw.items() if k in Status.__dataclass_fields__}))

    @staticmethod
    def _process_alive(status: Status) -> bool:
        if status.pid is None or status.host != socket.gethostname():
            return status.pid is not None  # another machine's run: trust what it wrote
        try:
            os.kill(status.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _status_of_older_run(self) -> Status:
        """Runs written before status.json existed: finished when their weights are saved."""
        metrics = self.metrics()
        if "interrupted" in metrics:
            return Status(INTERRUPTED, step=metrics["interrupted"].get("step", 0))
        if self.weights_dir() is not None:
            return Status(FINISHED, step=metrics.get("train", {}).get("steps", 0))
        return Status(FAILED if self.is_run() else INTERRUPTED)

    def summary(self) -> dict:
        """One line of a run list: state, task, method, model, the headline metric, speed, when."""
        status = self.status()
        try:
            cfg = self.raw_config()
        except ConfigError:
            cfg = {}
        metrics = self.metrics()
        final = metrics.get("final") or {}
        return {
            "path": str(self.path), "name": self.path.name, "state": status.state, "step": status.step,
            "error": status.error, "task": cfg.get("task", {}).get("name"), "method": cfg.get("method", {}).get("name"),
            "model": cfg.get("model", {}).get("name"), "metrics": final,
            "tokens_per_s": metrics.get("train", {}).get("tokens_per_s"), "started": status.started, "updated": status.updated,
        }

    # --- writers ------------------------------------------------------------------------------
    def write_config(self, cfg: Config) -> None:
        write_text_atomic(self.config_file, config_to_yaml(cfg))

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.metrics_file, metrics)

    def write_bench(self, task: str, result: dict) -> None:
        (self.path / "bench").mkdir(exist_ok=True)
        write_json_atomic(self.path / "bench" / f"{task}.json", result)

    def bench(self) -> dict[str, dict]:
        """task -> its latest benchmark result (bench/<task>.json)."""
        folder = self.path / "bench"
        return {f.stem: read_json(f) for f in sorted(folder.glob("*.json"))} if folder.is_dir() else {}

    def append_log(self, record: dict) -> None:
        append_line(self.log_file, json.dumps(record))

    def append_event(self, event: dict) -> None:
        append_line(self.events_file, json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False, default=str))

    def truncate_log(self, last_step: int) -> None:
        """On resume: drop the records an interrupted run wrote after its checkpoint (they are redone)."""
        if self.log_file.is_file():
            kept = [r for r in read_jsonl(self.log_file) if r.get("step", 0) <= last_step]
            write_text_atomic(self.log_file, "".join(json.dumps(r) + "\n" for r in kept))

    def set_status(self, state: str, **fields: Any) -> Status:
        """Record the run's state (fields not given keep their value); the process that calls this
        is the one that runs it."""
        path = self.file(self.STATUS)
        previous: dict = {}
        if path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                previous = {}
        now = time.time()
        status = Status(**{**{k: v for k, v in previous.items() if k in Status.__dataclass_fields__},
                           "state": state, "pid": os.getpid(), "host": socket.gethostname(), "updated": now, **fields})
        status.started = status.started or now
        status.run_id = status.run_id or uuid.uuid4().hex
        write_json_atomic(path, asdict(status))
        return status

    def save_weights(self, model, tokenizer) -> Path:
        """The adapter (PEFT methods) or the whole model, with the tokenizer beside it."""
        from peft import PeftModel

        target = self.path / ("adapter" if isinstance(model, PeftModel) else "model")

        def save(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        save_dir_atomic(target, save)
        return target

    def check_weights(self, saved: Optional[Path] = None) -> Path:
        """The saved weights, checked before anything loads them: the config file beside them and
        every safetensors file whole. The first problem is one line saying what to do."""
        saved = saved or self.weights_dir()
        resume = f"lmtune train {self.config_file} --output-dir {self.path} --resume"
        if saved is None:
            raise ConfigError(self._no_weights(resume))
        check_weights_dir(saved, f"re-run the training, or resume it from a checkpoint: {resume}")
        return saved

    def _no_weights(self, resume: str) -> str:
        """Why a run has no weights to load, from its status, and what to do."""
        status = self.status()
        has_checkpoint = self.checkpoints.is_dir() and any(self.checkpoints.iterdir())
        if self.is_alive():
            return f"{self.path}: still training (step {status.step}); its weights are saved when it ends"
        if status.state == INTERRUPTED and has_checkpoint:
            return f"{self.path}: stopped at step {status.step}, before its final weights; finish it with: {resume}"
        if status.state == FAILED:
            error = status.error.splitlines()[0][:160] if status.error else "no error recorded"
            return (f"{self.path}: failed at step {status.step} ({error}), before saving weights"
                    + (f"; continue from its last checkpoint with: {resume}" if has_checkpoint else ""))
        return f"{self.path}: no saved adapter or model; did the training run finish?"

    def write_file(self, name: str, write: Callable[[Path], None]) -> Path:
        """A file a task or a command adds (a picture, a report), written through `write(path)`."""
        target = self.path / name
        write(target)
        return target


def check_weights_dir(saved: Path, remedy: str) -> None:
    """An adapter/, model/ or checkpoint directory: its config and every safetensors file whole."""
    marker = "adapter_config.json" if (saved / "adapter_config.json").exists() or saved.name == "adapter" else "config.json"
    if saved.name.startswith("checkpoint-"):
        marker = None  # a checkpoint holds either
    if marker:
        if not (saved / marker).is_file():
            raise ConfigError(f"{saved / marker} is missing; {remedy}")
        read_json(saved / marker)
    files = sorted(saved.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{saved}: no .safetensors weights in it; {remedy}")
    for file in files:
        problem = safetensors_problem(file)
        if problem:
            raise ConfigError(f"{file}: damaged, not a valid safetensors file ({problem}); {remedy}")


def safetensors_header(path: Path) -> tuple[Optional[dict], int, Optional[str]]:
    """(the JSON header of a safetensors file, the bytes of data after it, None), or (None, 0, what is
    wrong). The format: 8 bytes of header length, a JSON header naming each tensor's dtype, shape
    and byte range, then the data."""
    size = path.stat().st_size
    if size < 8:
        return None, 0, f"{size} bytes, shorter than a header"
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > size - 8:
            return None, 0, "the header is longer than the file: truncated or not safetensors"
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, 0, "the header is not JSON"
    if not isinstance(header, dict):
        return None, 0, "the header is not a JSON object"
    return header, size - 8 - length, None


def tensor_names(path: Path) -> set[str]:
    header = safetensors_header(path)[0]
    return {k for k in header or {} if k != "__metadata__"}


def safetensors_problem(path: Path) -> Optional[str]:
    """What is wrong with a safetensors file, or None: its header is read, and the data must end
    exactly where the header says (a truncated or padded file does not)."""
    header, data, problem = safetensors_header(path)
    if problem:
        return problem
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            return f"tensor {name!r} has no valid byte range"
        ends.append(offsets[1])
    if not ends:
        return "it holds no tensors"
    if max(ends) != data:
        return f"the data is {data:,} bytes where the header names {max(ends):,}: truncated or padded"
    return None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: damaged (not UTF-8 text); this run cannot be read") from None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: damaged (not valid JSON); re-run, or remove it to read the rest of the run") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: damaged (not a JSON object)")
    return data


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines; a last line cut short by a kill is skipped, a damaged line elsewhere is an error."""
    lines = read_text(path).split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was cut
                break
            raise ConfigError(f"{path}:{number}: not a JSON line") from None
    return records


def runs_under(directory: str | Path) -> list[RunDir]:
    """Every run directory (one with config.yaml) directly under `directory`, by name."""
    root = Path(directory)
    return [RunDir(p) for p in sorted(root.iterdir()) if (p / RunDir.CONFIG).is_file()] if root.is_dir() else []


def run_summaries(directory: str | Path) -> list[dict]:
    """One summary per run directory under `directory` (state, task, method, model, metrics), newest first."""
    return sorted((r.summary() for r in runs_under(directory)), key=lambda s: s["updated"] or 0, reverse=True)
