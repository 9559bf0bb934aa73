"""Tasks: what a task adds to the shared path (encoding, loss, metrics), behind a registry."""

from lmtune.registry import Registry

TASKS: Registry = Registry("task")

# Importing the modules registers the tasks.
from lmtune.tasks import label_tokens, regression, seq_cls, sft, token_cls  # noqa: E402,F401
