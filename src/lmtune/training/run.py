"""`lmtune train` from any caller: config -> prepared run -> fitted -> summarised, with the run
directory's status and events kept up to date, whatever happens.

    train(cfg)                                    the command line, a notebook, the web UI
      read_data     every row checked before the run directory is made
      RunDir        created (or opened to resume), status "running"
      prepare       model, task, data, zero-shot, method        (train/prepare.py)
      fit           the Trainer, resumed or not, until it ends or is stopped   (train/fit.py)
      summarise     final evaluation, weights, metrics.json, loss.png, "finished"

Under torchrun / accelerate every process runs this; only the main process writes the run files.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lmtune import hardware
from lmtune.config import Config, config_to_yaml
from lmtune.data.dataset import Split, read_data
from lmtune.errors import ConfigError, LmtuneError
from lmtune.eval.bench import bench_saved_run, check_bench_tasks
from lmtune.model.precision import resolve_precision
from lmtune.plot import plot_runs
from lmtune.run_dir import FAILED, FINISHED, INTERRUPTED, RUNNING, RunDir
from lmtune.training.arguments import best_metric, training_arguments
from lmtune.training.auto_compile import compiled_from_step
from lmtune.training.checkpoint import CHECKPOINT_CONFIG, checkpoint_step, clear_staging, latest_checkpoint, resume_checkpoint
from lmtune.training.fit import Fitted, fit
from lmtune.training.interrupt import RunInterrupted, StopRequest
from lmtune.training.learned import not_learned
from lmtune.training.prepare import Prepared, prepare
from lmtune.training.reporters import ConsoleReporter, EventLog, Reporters

# Settings a checkpoint cannot be resumed under: it would continue another run's weights.
STRUCTURAL = ("model.", "method.", "task.", "distill.", "data.format", "data.labels", "data.template", "data.prompt",
              "data.system_prompt", "data.columns")


@dataclass
class RunResult:
    metrics: dict
    model: object  # the trained model, still in memory
    tokenizer: object
    out: Path
    run: Optional[RunDir] = None


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate (which set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def check_trackers(cfg: Config) -> None:
    """A tracker that is not installed is a one-line error before any work, not a traceback after."""
    import importlib.util

    for name in cfg.train.report_to:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.report_to: {name} is not installed; pip install {name}, or remove it from the list")


def config_diff(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(config_diff(a.get(k), b.get(k), f"{prefix}{k}.") for k in {*a, *b}))
    return set() if a == b else {prefix.rstrip(".")}


def open_for_resume(cfg: Config, resume: str, main: bool) -> tuple[RunDir, Optional[Path], list[str]]:
    """The run being resumed, its checkpoint (checked whole, and written by a run of this config),
    and the settings changed since that checkpoint. A run stopped before its first checkpoint
    starts again from the beginning (checkpoint None): its config is there, nothing else is kept."""
    import yaml

    run = RunDir(cfg.output.dir)
    if resume == "latest" and run.is_run() and latest_checkpoint(run.checkpoints) is None:
        changed = changed_settings(run.raw_config(), cfg, run.path)
        if main:
            if run.checkpoints.is_dir():
                clear_staging(run.checkpoints)
            run.truncate_log(-1)  # everything is redone, the zero-shot evaluation too
        return run, None, changed
    if not run.checkpoints.is_dir():
        raise ConfigError(f"--resume: {run.path} has no checkpoints/ directory; is output.dir the run to resume?")
    checkpoint = resume_checkpoint(run.checkpoints, resume)
    saved = checkpoint / CHECKPOINT_CONFIG
    try:
        before = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else (
            run.raw_config() if run.is_run() else None)
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"--resume: {saved} is damaged; resume from another checkpoint with --resume PATH") from None
    changed = changed_settings(before, cfg, checkpoint) if before is not None else []
    if main:
        clear_staging(run.checkpoints)
        run.truncate_log(checkpoint_step(checkpoint))
    return run, checkpoint, changed


def changed_settings(before: dict, cfg: Config, where: Path) -> list[str]:
    """The config keys changed since `before` (output.* aside); a change of what the run trains
    (model, method, data, task) would mix two runs and is refused."""
    changed = sorted(k for k in config_diff(before, cfg.model_dump(mode="json")) if not k.startswith("output."))
    clash = [k for k in changed if k.startswith(STRUCTURAL)]
    if clash:
        raise ConfigError(f"--resume: {where} was trained with other settings ({', '.join(clash[:4])}); resuming it "
                          "would mix two runs. Train a new run (another output.dir), or resume with the same settings")
    return changed


def train(cfg: Config, resume: Optional[str] = None, reporters: Optional[list] = None,
          stop: Optional[StopRequest] = None, splits: Optional[dict[str, Split]] = None) -> RunResult:
    """Run one training job and return its metrics and the trained model. `resume`: "latest" or a
    checkpoint path. `reporters`: where events go besides RUN_DIR/events.jsonl (default: the
    console). `stop`: ask it to stop from another thread (or a signal handler); the run then saves
    a checkpoint and raises RunInterrupted. `splits`: the config's data as read_data reads it,
    when the caller has read it already."""
    check_trackers(cfg)
    main = is_main_process()
    splits = splits if splits is not None else read_data(cfg)  # every row is checked before the run directory is made
    checkpoint, changed = None, []
    if resume is None:
        run = RunDir.create(cfg.output.dir, cfg.output.overwrite) if main else RunDir(cfg.output.dir)
    else:
        run, checkpoint, changed = open_for_resume(cfg, resume, main)
    reporter = Reporters([EventLog(run), *(reporters if reporters is not None else [ConsoleReporter()])] if main else [])
    stop = stop or StopRequest()
    if main:
        run.write_config(cfg)
        status = run.set_status(RUNNING, step=checkpoint_step(checkpoint) if checkpoint else 0, error=None)
        reporter.emit({"event": "started", "run_id": status.run_id, "output_dir": str(run.path),
                       "resumed_from": str(checkpoint) if checkpoint else None, "changed": changed,
                       "started_over": resume is not None and checkpoint is None})
    try:
        return _train(cfg, run, splits, checkpoint, reporter, stop, main)
    except RunInterrupted as e:
        if main:
            run.set_status(INTERRUPTED, step=e.step)
            reporter.emit({"event": "interrupted", "step": e.step, "checkpoint": str(e.checkpoint), "reason": e.reason})
        raise
    except BaseException as e:
        if main:
            _record_failure(run, reporter, e)
        raise


def _record_failure(run: RunDir, reporter: Reporters, error: BaseException) -> None:
    """status "failed" and a failed event with the error (and, for errors that are not the user's,
    the traceback), so a run list and a web page can show why. A signal outside the training steps
    (while loading, or saving) is an interruption without a checkpoint, not a failure."""
    stopped = isinstance(error, (KeyboardInterrupt, SystemExit))
    try:
        if stopped:
            run.set_status(INTERRUPTED, error="stopped by a signal outside the training steps (no checkpoint saved)")
            reporter.emit({"event": "interrupted", "step": run.status().step, "checkpoint": None, "reason": "signal"})
            return
        message = str(error) or type(error).__name__
        run.set_status(FAILED, error=message)
        reporter.emit({"event": "failed", "error": message, "error_type": type(error).__name__,
                       "traceback": None if isinstance(error, LmtuneError) else "".join(traceback.format_exception(error))})
    except Exception:  # the run directory itself is unwritable: the original error matters more
        pass


def _train(cfg: Config, run: RunDir, splits: dict, checkpoint: Optional[Path], reporter: Reporters, stop: StopRequest,
           main: bool) -> RunResult:
    from transformers import set_seed

    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)
    if cfg.train.bench_after and main:  # a task that cannot run fails now, not after the training
        check_bench_tasks(cfg.train.bench_after)
    args = training_arguments(cfg, run.path, precision, "validation" in splits)
    prep = prepare(cfg, splits, precision=precision, device=args.device, emit=reporter.emit,
                   zero_shot=cfg.train.zero_shot_eval and checkpoint is None and main,
                   main_process_first=args.main_process_first)
    metrics: dict = {}
    zero_shot = run.metrics().get("zero_shot") if checkpoint else prep.zero_shot
    if zero_shot is not None:
        metrics["zero_shot"] = zero_shot
        if main:
            run.write_metrics(metrics)
    fitted = fit(prep, run, args, reporter, stop, checkpoint, main,
                 {CHECKPOINT_CONFIG: config_to_yaml(cfg)})
    metrics["train"] = train_metrics(prep, fitted, checkpoint)
    trainer = fitted.trainer
    metric = best_metric(cfg)
    if metric and trainer.state.best_metric is not None:
        metrics["best"] = {"metric": metric, "value": trainer.state.best_metric,
                           "checkpoint": trainer.state.best_model_checkpoint, "loaded_at_end": cfg.train.load_best_at_end}
    step = trainer.state.global_step
    if main:
        run.set_status(RUNNING, step=step)
    if stop.requested:
        saved_at = latest_checkpoint(run.checkpoints)
        if main:
            metrics["interrupted"] = {"signal": stop.reason, "step": step, "checkpoint": str(saved_at)}
            run.write_metrics(metrics)
            write_plot(run)
        raise RunInterrupted(stop.reason, step, saved_at)
    if main:
        summarise(prep, run, metrics, reporter, trainer.state.log_history)
    return RunResult(metrics, prep.model, prep.tokenizer, run.path, run)


def train_metrics(prep: Prepared, fitted: Fitted, checkpoint: Optional[Path]) -> dict:
    trainer, args = fitted.trainer, fitted.trainer.args
    steps = trainer.state.global_step
    full_batches = steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    rows = prep.train_info.rows
    # Training rows consumed, over all processes (the last batch of an epoch may be short).
    samples = min(full_batches, int(rows * prep.cfg.train.epochs)) if rows >= 0 and args.max_steps <= 0 else full_batches
    return {
        "runtime_s": round(fitted.runtime_s, 2),
        "steps": steps,
        "samples": samples,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "tokens_per_s": round(fitted.new_tokens / fitted.runtime_s, 1) if fitted.runtime_s else 0.0,
        "train_loss": fitted.train_loss,
        "peak_memory_mb": round(hardware.peak_memory_mb(), 1),
        "trainable_params": prep.trainable,
        "total_params": prep.total,
        "trainable_share": round(prep.trainable / prep.total, 6),
        "precision": prep.precision,
        "compiled_from_step": compiled_from_step(prep.cfg, trainer),
        "skipped_nonfinite_batches": trainer.skipped_nonfinite,
        "resumed_from": str(checkpoint) if checkpoint else None,
    }


def summarise(prep: Prepared, run: RunDir, metrics: dict, reporter: Reporters, log_history: list[dict]) -> None:
    """The end of a run: the final evaluation, the weights, metrics.json, loss.png, "finished"."""
    cfg = prep.cfg
    if prep.eval_data is not None:
        reporter.emit({"event": "phase", "name": "final_eval"})
        metrics["final"] = prep.task.evaluate(prep.model, prep.eval_data, cfg.train.eval_batch_size, prep.precision)
        reporter.emit({"event": "evaluated", "when": "final", "step": metrics["train"]["steps"], "metrics": metrics["final"]})
        prep.task.write_artifacts(run.path)
        column = prep.task.class_column
        if column and column in prep.eval_data.column_names:
            warning = not_learned(metrics["final"], list(prep.eval_data[column]), log_history)
            if warning:  # printed under the run's table (report.print_run_summary) and kept in metrics.json
                metrics["warnings"] = [warning]
    reporter.emit({"event": "phase", "name": "saving"})
    saved = run.save_weights(prep.model, prep.tokenizer)
    metrics["saved"] = {"path": str(saved), "size_mb": round(dir_size_mb(saved), 2)}
    if cfg.train.bench_after:
        reporter.emit({"event": "phase", "name": "bench"})
        metrics["bench"] = bench_saved_run(run, cfg.train.bench_after, cfg.train.bench_limit)
    metrics["data"] = {name: vars(info) for name, info in (("train", prep.train_info), ("validation", prep.eval_info)) if info}
    run.write_metrics(metrics)
    write_plot(run)
    run.set_status(FINISHED, step=metrics["train"]["steps"])
    reporter.emit({"event": "finished", "metrics": metrics, "headline": prep.task.metric_for_summary, "output_dir": str(run.path)})


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def write_plot(run: RunDir) -> None:
    if run.log_file.is_file():
        plot_runs([(run.path.name, run.log())], run.plot_file)
