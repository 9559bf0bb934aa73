"""Ctrl-C / SIGTERM during training: finish the current step, save a checkpoint, stop cleanly.

A second Ctrl-C stops at once (the default behaviour comes back after the first signal).
"""

from __future__ import annotations

import contextlib
import signal

from transformers import TrainerCallback

from lmtune.errors import LmtuneError


class TrainingInterrupted(LmtuneError):
    """The run stopped on a signal after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # what a shell reports for a process ended by that signal


class StopOnSignal(TrainerCallback):
    """Records SIGINT/SIGTERM while installed; at the next step end asks the Trainer to save and stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        for s in self.SIGNALS:  # a second signal is not deferred
            signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
