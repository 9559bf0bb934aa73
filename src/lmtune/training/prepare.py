"""The first half of a run, shared by `lmtune train`, the planner and the tests: the data read and
checked, the model loaded for the task, the data tokenised, the zero-shot measurement, the method
applied. Nothing here writes to the run directory."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

from lmtune.config import Config
from lmtune.data.dataset import Split, SplitInfo, read_data, stream_split, tokenize_split
from lmtune.data.tokenize import TRUNCATED
from lmtune.loading import attach_reference, load_for_training
from lmtune.methods import METHODS, AddedModules, Method, trainable_summary
from lmtune.model.lean_block import use_lean_block
from lmtune.model.precision import resolve_precision, weights_dtype
from lmtune.training.compile import compile_blocks


@dataclass
class Prepared:
    cfg: Config
    model: object  # the method applied, on its device
    tokenizer: object
    task: object
    method: Method
    precision: str
    train_data: object  # a datasets.Dataset (or IterableDataset when streamed)
    train_info: SplitInfo
    eval_data: object = None
    eval_info: Optional[SplitInfo] = None
    zero_shot: Optional[dict] = None  # the task's metrics before training, when asked for
    trainable: int = 0
    total: int = 0

    def weights_description(self) -> str:
        if self.method.quantization:
            return "4-bit"
        return str(weights_dtype(self.cfg.model.dtype, self.precision, self.method.freezes_base)).removeprefix("torch.")


def tokenize_splits(cfg: Config, splits: dict[str, Split], tokenizer, task) -> dict:
    """name -> (tokenised dataset, SplitInfo); a streamed training split is read lazily instead."""
    out = {}
    for name, split in splits.items():
        if name == "train" and cfg.data.streaming:
            out[name] = stream_split(cfg.data.train, cfg.data, task.encode, cfg.train.seed)
        else:
            out[name] = tokenize_split(split, cfg.data, cfg.task, tokenizer, task.encode)
            undeclared = set(out[name][0].column_names) - set(task.columns) - {TRUNCATED}
            if undeclared:  # a task's encode and its declared columns disagree: a bug in the task, not the data
                raise RuntimeError(f"task {task.name} produced columns {sorted(undeclared)} it does not declare in Task.columns")
    return out


def apply_method(method_cfg, model, tokenizer, task=None):
    """The task's own layers (a CRF), then the method (LoRA, freezing ...): the model as it trains.
    Without a task (the planner's causal-LM trunk) nothing is added and nothing must stay trainable."""
    if task is not None:
        model = task.prepare(model)
    added = task.added_modules() if task is not None else AddedModules()
    model = METHODS.get(method_cfg.name).apply(model, method_cfg, tokenizer, added)
    use_lean_block(model)  # the same norms and MLPs, with less kept for backward (model/lean_block.py)
    return model


def prepare(cfg: Config, splits: Optional[dict[str, Split]] = None, *, precision: Optional[str] = None,
            device=None, zero_shot: bool = False, emit: Callable[[dict], None] = lambda event: None,
            main_process_first: Callable = lambda desc: contextlib.nullcontext()) -> Prepared:
    """Everything a run needs before its first step. `zero_shot` measures the task's metrics on the
    validation split with the base model, before the method is applied; `main_process_first` lets
    one process of a distributed run fill the tokenised-data cache before the others read it."""
    precision = precision or resolve_precision(cfg.train.precision)
    splits = splits if splits is not None else read_data(cfg)
    if cfg.distill:  # a teacher that is not there fails now, not after the student has loaded
        from lmtune.loading import teacher_path

        teacher_path(cfg.distill)
    loaded = load_for_training(cfg, precision)
    model, tokenizer, task = loaded.model, loaded.tokenizer, loaded.task
    if not task.reference_precomputed(cfg):
        attach_reference(loaded)  # before anything trains: the starting weights (DPO with full, freeze)
    metric = cfg.train.metric_for_best
    if metric and metric not in task.metrics:
        from lmtune.errors import ConfigError

        raise ConfigError(f"train.metric_for_best: task {cfg.task.name} reports {', '.join(task.metrics)}, not {metric!r}")
    with main_process_first(desc="tokenising"):
        tokenized = tokenize_splits(cfg, splits, tokenizer, task)
    train_data, train_info = tokenized["train"]
    eval_data, eval_info = tokenized.get("validation", (None, None))
    task.fit(train_data)
    if getattr(cfg.task, "teacher", None):  # task embedding: the teacher's vectors of every pair, once
        from lmtune.infer.embed import with_teacher_embeddings

        emit({"event": "phase", "name": "teacher_embeddings"})
        train_data, eval_data = with_teacher_embeddings(cfg, splits, train_data, eval_data)
    if cfg.distill:
        from lmtune.loading import load_teacher
        from lmtune.tasks.distill import DistilledTask

        task = DistilledTask(task, load_teacher(cfg, task, tokenizer, precision), cfg.distill.alpha, cfg.distill.temperature)
    emit({"event": "data", "template": task.renderer.mode,
          "splits": {name: vars(info) for name, info in (("train", train_info), ("validation", eval_info)) if info}})
    if device is not None:
        model.to(device)
        if getattr(task, "reference", None) is not None:
            task.reference.to(device)
    if task.reference_precomputed(cfg):  # the model as loaded is the reference: its log-probs of every pair, once
        from lmtune.tasks.reference_logps import with_reference_logps

        emit({"event": "phase", "name": "reference_logps"})
        with main_process_first(desc="reference log-probs"):
            train_data = with_reference_logps(task, model, train_data, cfg.train.eval_batch_size, precision)
            if eval_data is not None:
                eval_data = with_reference_logps(task, model, eval_data, cfg.train.eval_batch_size, precision)
    scores = None
    if zero_shot and eval_data is not None:
        emit({"event": "phase", "name": "zero_shot_eval"})
        scores = task.evaluate(model, eval_data, cfg.train.eval_batch_size, precision)
        emit({"event": "evaluated", "when": "zero_shot", "step": 0, "metrics": scores})
    model = apply_method(cfg.method, model, tokenizer, task)
    if cfg.train.compile is True:  # "auto" decides during the run (training/auto_compile.py)
        emit({"event": "phase", "name": "compiling", "blocks": compile_blocks(model)})
    trainable, total = trainable_summary(model)
    prepared = Prepared(cfg, model, tokenizer, task, METHODS.get(cfg.method.name), precision, train_data, train_info,
                        eval_data, eval_info, scores, trainable, total)
    emit({"event": "model", "method": cfg.method.name, "trainable": trainable, "total": total,
          "weights": prepared.weights_description(), "precision": precision})
    return prepared
