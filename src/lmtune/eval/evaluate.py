"""`lmtune eval`: the task's metrics of a saved run on its validation split or on any file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lmtune.data.dataset import build_split
from lmtune.data.templates import Renderer
from lmtune.errors import ConfigError
from lmtune.run_dir import load_run
from lmtune.tasks import TASKS


def evaluate_run(run_dir: str | Path, data: Optional[str] = None) -> dict:
    cfg, model, tokenizer, precision = load_run(run_dir)
    path = data or cfg.data.validation
    if not path:
        raise ConfigError(f"{run_dir}: the run has no data.validation; pass --data FILE")
    task = TASKS.get(cfg.task.name)(cfg, tokenizer, Renderer(tokenizer, cfg.data.template))
    limit = None if data else cfg.data.max_eval_samples
    dataset, info = build_split(path, cfg.data, cfg.task, tokenizer, task.encode, limit, cfg.train.seed)
    metrics = task.evaluate(model, dataset, cfg.train.eval_batch_size, precision)
    return {"data": path, "rows": info.rows, **metrics}
