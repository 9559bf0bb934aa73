"""Callbacks: one JSON line per log, and a progress bar that shows loss, learning rate and tokens/s."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


class JsonlLogger(TrainerCallback):
    """Appends every log (loss, learning rate, eval metrics) to log.jsonl, flushed at once."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def truncate_log(path: Path, last_step: int) -> None:
    """On resume: drop the records an interrupted run wrote after its checkpoint (they are redone)."""
    if not path.is_file():
        return
    from lmtune.outputs import write_text_atomic

    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class Progress(ProgressCallback):
    """The Trainer's bar (steps, elapsed, ETA) with loss, learning rate and non-padding tokens/s
    beside it instead of a printed dict per log; evaluation results get one readable line."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.start, self.start_tokens = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", lr=f"{logs.get('learning_rate', 0):.2e}",
                                          tok_s=f"{(state.num_input_tokens_seen - self.start_tokens) / elapsed:,.0f}")
        evals = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
        if evals:
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in evals.items())
            self.training_bar.write(f"lmtune: step {state.global_step}: validation {shown}")
