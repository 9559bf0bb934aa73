"""Fine-tuning methods behind a registry: name -> Method(apply, freezes_base)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lmtune.registry import Registry


@dataclass(frozen=True)
class Method:
    apply: Callable  # (model, MethodConfig) -> model ready to train
    freezes_base: bool  # True: the base weights are frozen and may be held in a 16-bit dtype


METHODS: Registry[Method] = Registry("method")

from lmtune.methods import full, lora  # noqa: E402,F401  (registers the methods)


def trainable_summary(model) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
