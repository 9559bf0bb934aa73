"""Callbacks: one JSON line per logging step."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


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
