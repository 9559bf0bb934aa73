"""How a run tells the world what it is doing: a stream of events (plain dicts with an "event" key)
sent to reporters. The console reporter prints what a person at a terminal reads; the event log
writes every event as a JSON line in the run directory (events.jsonl), for a web page or another
program to follow. train() takes any list of reporters, so a notebook or a UI can add its own.

Events, in the order a run sends them (docs/training.md describes each field):
    started      run_id, output_dir, resumed_from, changed (config keys changed since the checkpoint),
                 started_over (--resume of a run that stopped before its first checkpoint)
    data         splits: {train, validation} with rows, skipped, truncated, tokens, lengths; template
    model        method, trainable, total, weights, precision
    phase        name: zero_shot_eval, compiling, training, final_eval, saving, bench
    evaluated    when (zero_shot, step, final), step, metrics
    step         step, max_steps, epoch, loss, learning_rate, grad_norm, tokens_per_s, elapsed_s, eta_s
    checkpoint   step, path
    finished     metrics (what metrics.json holds)
    interrupted  step, checkpoint, reason
    failed       error, error_type, traceback (for errors that are not the user's)
"""

from __future__ import annotations

import time
from typing import Protocol

from transformers import TrainerCallback

from lmtune import report
from lmtune.run_dir import RUNNING, RunDir


class Reporter(Protocol):
    def emit(self, event: dict) -> None: ...


class Reporters:
    """Several reporters as one; a reporter that fails does not stop the run or the others."""

    def __init__(self, reporters: list):
        self.reporters = list(reporters)

    def emit(self, event: dict) -> None:
        for reporter in self.reporters:
            try:
                reporter.emit(event)
            except Exception as e:  # a broken pipe or a UI that went away must not end training
                if isinstance(reporter, EventLog):
                    raise  # the run directory itself is not writable: that is the run's problem
                print(f"lmtune: a reporter failed ({type(e).__name__}: {e}); continuing", flush=True)

    def trainer_callbacks(self) -> list:
        return [cb for r in self.reporters for cb in getattr(r, "trainer_callbacks", lambda: [])()]


class EventLog:
    """Every event, one JSON line each, appended to RUN_DIR/events.jsonl and flushed at once; a
    logged step also moves status.json's step, so `lmtune runs` shows where a running run is (and
    where a failed one stopped) rather than the step it started from."""

    def __init__(self, run: RunDir):
        self.run = run

    def emit(self, event: dict) -> None:
        self.run.append_event(event)
        if event["event"] == "step":
            self.run.set_status(RUNNING, step=event["step"])


class ConsoleReporter:
    """What `lmtune train` prints: one line per stage, the progress bar, the final table."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def trainer_callbacks(self) -> list:
        from lmtune.training.callbacks import Progress

        return [] if self.quiet else [Progress()]

    def emit(self, event: dict) -> None:
        if self.quiet:
            return
        kind = event["event"]
        if kind == "started" and event.get("started_over"):
            say(f"--resume: {event['output_dir']} stopped before its first checkpoint; starting it again from the "
                "beginning with its config")
        elif kind == "started" and event.get("resumed_from"):
            if event.get("changed"):
                say(f"resuming with changed settings: {', '.join(event['changed'])}")
            say(f"resuming from {event['resumed_from']}")
        elif kind == "data":
            report.print_data_summary(event["splits"], event["template"])
        elif kind == "phase":
            message = PHASES.get(event["name"])
            if message:
                say(message.format(**event))
        elif kind == "auto_compile":
            e = event
            say(f"train.compile=auto at step {e['step']}: {e['steps_left']} steps left at {e['step_s']:.2f} s; compiling "
                f"would save ~{e['saving_s']} s for ~{e['cost_s']:.0f} s ({'warm' if e['warm_cache'] else 'cold'} cache): "
                + ("compiling" if e["compiled"] else "staying eager"))
        elif kind == "model":
            e = event
            say(f"{e['method']}: {e['trainable']:,} trainable parameters of {e['total']:,} "
                f"({100 * e['trainable'] / e['total']:.3f}%), base weights {e['weights']}, precision {e['precision']}")
        elif kind == "finished":
            report.print_run_summary(event["metrics"], event["headline"], event["output_dir"])


PHASES = {
    "zero_shot_eval": "zero-shot evaluation on the validation split ...",
    "compiling": "compiling {blocks} transformer blocks (torch.compile); the first steps take longer",
    "final_eval": "final evaluation on the validation split ...",
    "bench": "benchmarks on the saved model (train.bench_after) ...",
}


def say(text: str) -> None:
    print(f"lmtune: {text}", flush=True)


class EventCallback(TrainerCallback):
    """Turns the Trainer's logs and saves into step / evaluated / checkpoint events."""

    def __init__(self, reporter: Reporters):
        self.reporter = reporter

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.start_step, self.start_tokens = time.perf_counter(), state.global_step, state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            done = state.global_step - self.start_step
            left = max(state.max_steps - state.global_step, 0)
            self.reporter.emit({
                "event": "step", "step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                "loss": logs["loss"], "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                "tokens_per_s": round((state.num_input_tokens_seen - self.start_tokens) / elapsed, 1),
                "elapsed_s": round(elapsed, 2), "eta_s": round(elapsed / done * left, 1) if done else None})
        evals = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
        if evals:
            self.reporter.emit({"event": "evaluated", "when": "step", "step": state.global_step, "metrics": evals})

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from lmtune.training.checkpoint import latest_checkpoint
            from pathlib import Path

            saved = latest_checkpoint(Path(args.output_dir))
            self.reporter.emit({"event": "checkpoint", "step": state.global_step, "path": str(saved) if saved else None})
