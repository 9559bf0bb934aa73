"""What every task shares: batching for evaluation, the precision context, the task interface."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from lmtune.config import Config
from lmtune.data.collate import PadCollator
from lmtune.data.templates import Renderer
from lmtune.hardware import DTYPES


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast, as the Trainer uses during training; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def model_device(model) -> torch.device:
    return next(model.parameters()).device


class Task:
    """Base class. A task encodes examples, computes its training loss and its metrics."""

    padding_side = "right"
    metric_for_summary = "loss"

    def __init__(self, cfg: Config, tokenizer, renderer: Renderer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.renderer = renderer

    def collator(self) -> PadCollator:
        return PadCollator(self.tokenizer.pad_token_id, self.padding_side)

    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        """A batched datasets.map function: messages (and label) -> input_ids, labels, truncated."""
        raise NotImplementedError

    def loss(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(sum of the per-target losses, number of targets) for one micro-batch."""
        raise NotImplementedError

    def evaluate(self, model, dataset, batch_size: int, precision: str) -> dict[str, float]:
        raise NotImplementedError

    def batches(self, dataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Evaluation batches of similar lengths (less padding), moved to the model's device."""
        columns = {c: dataset[c] for c in ("input_ids", "labels", "label") if c in dataset.column_names}
        lengths = [len(x) for x in columns["input_ids"]]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        collate = self.collator()
        for start in range(0, len(order), batch_size):
            rows = [{c: values[i] for c, values in columns.items()} for i in order[start : start + batch_size]]
            yield collate(rows)
