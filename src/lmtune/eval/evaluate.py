"""`lmtune eval`: the task's metrics of a saved run on its validation split or on any file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lmtune.data.dataset import Split, load_examples, read_splits, tokenize_split
from lmtune.data.templates import Renderer
from lmtune.errors import ConfigError
from lmtune.run_dir import load_run
from lmtune.tasks import TASKS


def evaluate_run(run_dir: str | Path, data: Optional[str] = None) -> dict:
    cfg, model, tokenizer, precision = load_run(run_dir)
    task = TASKS.get(cfg.task.name)(cfg, tokenizer, Renderer(tokenizer, cfg.data.template))
    if data:
        examples, skipped = load_examples(data, cfg.data)
        split = Split("eval", data, examples, skipped)
    elif cfg.data.validation or cfg.data.val_size:
        split = read_splits(cfg.data, cfg.train.seed)["validation"]
    else:
        raise ConfigError(f"{run_dir}: the run has no validation data; pass --data FILE")
    dataset, info = tokenize_split(split, cfg.data, cfg.task, tokenizer, task.encode)
    metrics = task.evaluate(model, dataset, cfg.train.eval_batch_size, precision)
    return {"data": split.source, "rows": info.rows, **metrics}
