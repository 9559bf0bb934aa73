"""What every task shares: batching for evaluation, the precision context, the task interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F

from lmtune.data.collate import PackCollator, PadCollator
from lmtune.data.formats import FORMATS
from lmtune.data.templates import Renderer
from lmtune.data.tokenize import IGNORE, TRUNCATED
from lmtune.model.precision import autocast, model_device  # noqa: F401  (where tasks used to keep them)
from lmtune.methods import AddedModules, virtual_tokens_in_sequence
from lmtune.model.load import CAUSAL_LM, ModelSpec
from lmtune.registry import Registry
from lmtune.sections import Section
from lmtune.tasks.prompt_once import predicting_targets, prompt_once_length, prompt_once_logits
from lmtune.tasks.token_cross_entropy import token_cross_entropy

if TYPE_CHECKING:
    from lmtune.config import Config


TASKS: Registry[type["Task"]] = Registry("task")


def register_task(name: str):
    """Class decorator: the task under its name (its Options' name must be the same literal)."""
    def add(cls):
        cls.name = name
        return TASKS.register(name)(cls)

    return add


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")


def target_logits(model, inputs: dict[str, torch.Tensor], virtual_tokens: int | None = None,
                  upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits only where a target is predicted, and those targets: (N, vocab) fp32 (in the model's
    own dtype with upcast=False) and (N,).

    The LM head runs only at positions whose next label is not -100 (a boolean logits_to_keep),
    so a prompt-heavy batch never materialises logits over the whole vocabulary for every token.
    Same loss as the model's own shifted cross-entropy, computed on far fewer positions.
    `virtual_tokens` overrides what the model's peft config says (0 with its adapter switched off).
    """
    labels = inputs["labels"]
    next_labels = labels[:, 1:]
    keep = predicting_targets(labels)
    virtual = virtual_tokens_in_sequence(model) if virtual_tokens is None else virtual_tokens
    if virtual:  # prompt tuning / P-tuning put virtual tokens before each row
        keep = torch.cat([keep.new_zeros(keep.shape[0], virtual), keep], dim=1)
    kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    shared = prompt_once_length(model, kwargs, keep)
    if shared:
        logits = prompt_once_logits(model, kwargs, keep, shared)
    else:  # use_cache=False: without a cache the model reads packed rows from position_ids.
        logits = model(**kwargs, use_cache=False, logits_to_keep=keep).logits
    logits = logits.reshape(-1, logits.shape[-1])
    return logits.float() if upcast else logits, next_labels[next_labels != IGNORE]


def target_loss(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Task.loss for the tasks whose logits_and_targets is target_logits: the same summed
    cross-entropy, from the logits in the model's dtype, upcast a few rows at a time."""
    logits, targets = target_logits(model, inputs, upcast=False)
    return token_cross_entropy(logits, targets).sum(), targets.numel()


class TaskOptions(Section):
    """The options of a task (the `task` section); each task subclasses this with its own name."""

    name: str


class Task:
    """Base class. A task encodes examples, computes its training loss and its metrics, and
    declares the facts the rest of lmtune asks about it (config checks, planner, loaders, UI)."""

    name: str = ""  # set by @register_task
    Options: type[TaskOptions] = TaskOptions  # the task section's keys
    examples: tuple[type, ...] = ()  # the example families (so the data formats) it trains on
    columns: tuple[str, ...] = ("input_ids", "labels")  # what encode() produces, besides "truncated"
    metrics: dict[str, str] = {"loss": "min"}  # what evaluate() returns, and whether larger ("max") is better
    metric_for_summary = "loss"
    model_spec = CAUSAL_LM  # which transformers class it trains (classmethod spec() may shape its head)
    generates = True  # a causal LM that generate / chat / serve can use
    answer_tokens: int | None = None  # the tokens a generated answer stops at, where the task fixes them
    labels_name: str | None = None  # what data.labels names ("label", "tag"), when the task needs them
    class_column: str | None = None  # the encoded column holding each row's class (training/learned.py's check)
    can_pack = True  # rows may be packed together (data.packing)
    why_not_packed = "predicts per row"  # said when packing is refused
    can_distill = False  # a teacher's outputs can be compared with the student's (distill section)
    head_modules: tuple[str, ...] = ()  # a new head the task puts on the model: always trained, never quantised
    uses_reference = False  # a reference model is run on every row (DPO): see needs_reference
    prompt_once = False  # its loss goes through target_logits, which computes a batch's common prompt once where it may

    @classmethod
    def spec(cls, cfg: "Config") -> ModelSpec:
        return cls.model_spec

    @classmethod
    def check(cls, cfg: "Config") -> None:
        """Raise ValueError for a config this task cannot run; the message says what to change."""
        for fmt in sorted(cfg.data.formats()):
            if FORMATS.get(fmt).family not in cls.examples:
                takes = [n for n in FORMATS.names() if FORMATS.get(n).family in cls.examples]
                goes_with = [t for t in TASKS.names() if FORMATS.get(fmt).family in TASKS.get(t).examples]
                raise ValueError(f"task {cls.name} needs data.format: {' or '.join(takes)}"
                                 + (f"; data.format {fmt} goes with task {' or '.join(goes_with)}" if goes_with else ""))
        if cls.labels_name and not cfg.data.labels:
            raise ValueError(f"task {cls.name} needs data.labels (the {cls.labels_name} names)")
        if cfg.distill and not cls.can_distill:
            distillable = [t for t in TASKS.names() if TASKS.get(t).can_distill]
            raise ValueError(f"distill works with tasks {', '.join(distillable)}, not {cls.name}")
        if cfg.data.packing and not cls.can_pack:
            raise ValueError(f"task {cls.name} {cls.why_not_packed}; set data.packing=false")
        metric = cfg.train.metric_for_best
        if metric and metric not in cls.metrics:
            raise ValueError(f"train.metric_for_best: task {cls.name} reports {', '.join(cls.metrics)}, not {metric!r}")

    @classmethod
    def targets_per_row(cls, cfg: "Config") -> float:
        """Positions with a loss in a sequence of data.max_length tokens, for the planner before the
        data is read: about half of them (an answer after its prompt)."""
        return cfg.data.max_length / 2

    @classmethod
    def sequences_per_row(cls, cfg: "Config") -> int:
        """Sequences the model computes for one training row (a preference pair: 2; GRPO: its answers)."""
        return 1

    @classmethod
    def generated_tokens_per_row(cls, cfg: "Config") -> int:
        """Tokens the model generates for a training row before learning from it (GRPO's answers)."""
        return 0

    @classmethod
    def reference_precomputed(cls, cfg: "Config") -> bool:
        """Whether the reference's outputs are computed once before training (tasks/reference_logps.py)."""
        return False

    @classmethod
    def shares_prompt(cls, cfg: "Config") -> bool:
        """Whether a row's answers are computed after one copy of their prompt (tasks/shared_prefix.py)."""
        return False

    @classmethod
    def needs_reference(cls, cfg: "Config") -> bool:
        """Whether a reference model is run on every batch (loading.attach_reference, the planner)."""
        return cls.uses_reference

    @property
    def extra_layers(self) -> tuple[str, ...]:
        """Layers this task adds on top of the transformers model (saved and reloaded with it)."""
        return ()

    def added_modules(self) -> AddedModules:
        """What the method must leave trainable, whatever it freezes: the head and the task's layers."""
        return AddedModules(self.head_modules, self.extra_layers)

    def prepare(self, model):
        """Layers the task adds to the loaded model before the method wraps it (a CRF)."""
        return model

    def fit(self, train_dataset) -> None:
        """Whatever the task learns from the tokenised training split before training (class weights)."""

    def count_items(self, batch: dict) -> int | None:
        """What the loss of a batch is averaged over, when it is not its target tokens (the
        Trainer's count): preference pairs, for instance. None: the target tokens."""
        return None

    def training_metrics(self) -> dict[str, float]:
        """Metrics the task gathered while training since the last log (reward accuracy ...)."""
        return {}

    def write_artifacts(self, out) -> None:
        """Pictures or files the task adds to the run directory after the final evaluation."""

    def __init__(self, cfg: "Config", tokenizer, renderer: Renderer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.renderer = renderer

    def collator(self, packing: bool = False):
        """Padding to the longest row, or (training with data.packing) one padding-free row."""
        if packing:
            return PackCollator()
        return PadCollator(self.tokenizer.pad_token_id)

    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        """A batched datasets.map function: messages (and label) -> input_ids, labels, truncated."""
        raise NotImplementedError

    def logits_and_targets(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N x classes fp32 logits, N targets) at the positions the task trains on: what a
        distillation teacher is compared on."""
        raise NotImplementedError

    def classes(self, logits: torch.Tensor) -> torch.Tensor:
        """The columns of those logits that are the task's answers, where a distillation teacher's
        distribution is compared: all of them, except for label words (the words, not the vocabulary)."""
        return logits

    def loss(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(sum of the per-target losses, number of targets) for one micro-batch."""
        logits, targets = self.logits_and_targets(model, inputs)
        return F.cross_entropy(logits, targets, reduction="sum"), targets.numel()

    def evaluate(self, model, dataset, batch_size: int, precision: str) -> dict[str, float]:
        raise NotImplementedError

    def eval_batches(self, model, dataset, batch_size: int, precision: str) -> Iterator[dict[str, torch.Tensor]]:
        """Evaluation batches on the model's device, with the model in eval mode and under the run's
        autocast; the model's mode is restored afterwards. Call under torch.inference_mode()."""
        device = model_device(model)
        was_training = model.training
        model.eval()
        try:
            with autocast(device, precision):
                for batch in self.batches(dataset, batch_size):
                    yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        finally:
            model.train(was_training)

    def batches(self, dataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Evaluation batches of similar lengths (less padding), moved to the model's device."""
        columns = {c: dataset[c] for c in dataset.column_names if c != TRUNCATED}
        lengths = [len(x) for x in columns["input_ids"]]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        collate = self.collator()
        for start in range(0, len(order), batch_size):
            rows = [{c: values[i] for c, values in columns.items()} for i in order[start : start + batch_size]]
            yield collate(rows)
