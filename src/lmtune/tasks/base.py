"""What every task shares: batching for evaluation, the precision context, the task interface."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from lmtune.config import Config
from lmtune.data.collate import PackCollator, PadCollator
from lmtune.data.templates import Renderer
from lmtune.data.tokenize import IGNORE
from lmtune.hardware import DTYPES
from lmtune.methods.peft_methods import virtual_tokens_in_sequence
from lmtune.model.load import CAUSAL_LM, ModelSpec


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast, as the Trainer uses during training; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def model_device(model) -> torch.device:
    return next(model.parameters()).device


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")


def target_logits(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits only where a target is predicted, and those targets: (N, vocab) fp32 and (N,).

    The LM head runs only at positions whose next label is not -100 (a boolean logits_to_keep),
    so a prompt-heavy batch never materialises logits over the whole vocabulary for every token.
    Same loss as the model's own shifted cross-entropy, computed on far fewer positions.
    """
    labels = inputs["labels"]
    next_labels = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = next_labels != IGNORE
    virtual = virtual_tokens_in_sequence(model)
    if virtual:  # prompt tuning / P-tuning put virtual tokens before each row
        keep = torch.cat([keep.new_zeros(keep.shape[0], virtual), keep], dim=1)
    kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    # use_cache=False: without a cache the model reads packed rows from position_ids.
    logits = model(**kwargs, use_cache=False, logits_to_keep=keep).logits
    return logits.reshape(-1, logits.shape[-1]).float(), next_labels[next_labels != IGNORE]


class Task:
    """Base class. A task encodes examples, computes its training loss and its metrics."""

    model_spec = CAUSAL_LM  # which transformers class it trains (classmethod spec() may shape its head)
    generates = True  # a causal LM that generate / chat / serve can use

    @classmethod
    def spec(cls, cfg: Config) -> ModelSpec:
        return cls.model_spec

    def prepare(self, model):
        """Layers the task adds to the loaded model before the method wraps it (a CRF)."""
        return model

    def fit(self, train_dataset) -> None:
        """Whatever the task learns from the tokenised training split before training (class weights)."""

    def write_artifacts(self, out) -> None:
        """Pictures or files the task adds to the run directory after the final evaluation."""

    metric_for_summary = "loss"
    metrics: tuple[str, ...] = ("loss",)  # what evaluate() returns; train.metric_for_best must be one

    def __init__(self, cfg: Config, tokenizer, renderer: Renderer):
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
                    yield {k: v.to(device) for k, v in batch.items()}
        finally:
            model.train(was_training)

    def batches(self, dataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Evaluation batches of similar lengths (less padding), moved to the model's device."""
        columns = {c: dataset[c] for c in ("input_ids", "token_type_ids", "labels", "label") if c in dataset.column_names}
        lengths = [len(x) for x in columns["input_ids"]]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        collate = self.collator()
        for start in range(0, len(order), batch_size):
            rows = [{c: values[i] for c, values in columns.items()} for i in order[start : start + batch_size]]
            yield collate(rows)
