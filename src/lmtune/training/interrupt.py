"""Stopping a run cleanly from outside: whoever holds the run's StopRequest (the command line on
Ctrl-C / SIGTERM, a web page's Stop button, a notebook) asks it to stop; at the next step end the
Trainer saves a checkpoint and training ends, and train() raises RunInterrupted."""

from __future__ import annotations

import threading
from typing import Optional

from transformers import TrainerCallback

from lmtune.errors import LmtuneError


class RunInterrupted(LmtuneError):
    """The run stopped on request after saving a checkpoint."""

    def __init__(self, reason: str, step: int, checkpoint):
        super().__init__(f"stopped by {reason} at step {step}; checkpoint saved to {checkpoint}")
        self.reason, self.step, self.checkpoint = reason, step, checkpoint


class StopRequest:
    """A thread-safe flag with the reason it was raised (a signal name, "the web UI" ...)."""

    def __init__(self):
        self._event = threading.Event()
        self.reason: Optional[str] = None
        # True while the Trainer runs steps: only then can a request be honoured with a checkpoint.
        # Before (loading) and after (final evaluation, saving) a signal handler stops at once instead.
        self.armed = False

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


class StopCallback(TrainerCallback):
    """At the step end after a stop request: save a checkpoint and end training."""

    def __init__(self, stop: StopRequest):
        self.stop = stop

    def on_train_begin(self, args, state, control, **kwargs):
        self.stop.armed = True

    def on_train_end(self, args, state, control, **kwargs):
        self.stop.armed = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
