"""Tasks: what a task adds to the shared path (encoding, loss, metrics, its facts), behind a registry."""

from lmtune.tasks.base import TASKS, Task, TaskOptions  # noqa: F401

# Importing the modules registers the tasks: one line per task.
from lmtune.tasks import label_tokens, regression, seq_cls, sft, token_cls  # noqa: E402,F401
from lmtune.tasks import dpo, grpo, kto, orpo, simpo  # noqa: E402,F401
from lmtune.tasks import embedding  # noqa: E402,F401
