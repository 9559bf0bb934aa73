"""Callbacks: one JSON line per log, and a progress bar that shows loss, learning rate and tokens/s."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from lmtune.run_dir import RunDir


class JsonlLogger(TrainerCallback):
    """Appends every log (loss, learning rate, eval metrics) to the run's log.jsonl, flushed at once."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.run.append_log({"step": state.global_step, "epoch": state.epoch, **logs})


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
