"""Fine-tuning methods behind a registry: name -> Method. Each module registers its builders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from lmtune.registry import Registry


@dataclass(frozen=True)
class Method:
    apply: Callable  # (model, method options, tokenizer) -> the model ready to train
    freezes_base: bool  # the base weights are frozen, so they may be held in a 16-bit dtype
    merge: str = "no"  # "yes": `lmtune merge` folds the adapter into the weights; "plain": the run is a plain model
    quantization: Optional[Callable] = None  # (method options, compute dtype) -> a transformers quantization config


METHODS: Registry[Method] = Registry("method")

from lmtune.methods import full, freeze, peft_methods  # noqa: E402,F401  (registers the methods)


def trainable_summary(model) -> tuple[int, int]:
    """(trainable parameters, all parameters). 4-bit weights count by their real element count."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return trainable, total


def _numel(p) -> int:
    # bitsandbytes packs two 4-bit values per uint8 element; its quant_state knows the real shape.
    state = getattr(p, "quant_state", None)
    return state.shape.numel() if state is not None else p.numel()
