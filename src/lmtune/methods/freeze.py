"""Freezing: only the last N transformer blocks and parameters matching name patterns train; the
run saves a whole model."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Literal

import torch
from pydantic import Field

from lmtune.errors import ConfigError
from lmtune.methods import Method, PlanFacts, register_method
from lmtune.model.blocks import transformer_blocks
from lmtune.sections import Section


class FreezeMethod(Section):
    """Only the last N transformer blocks and/or parameters matching name patterns train."""

    name: Literal["freeze"] = "freeze"
    train_last_layers: int = Field(2, ge=0, description="how many of the last transformer blocks train")
    train_patterns: list[str] = Field(default_factory=list, description="glob patterns of parameter names that train too, e.g. '*norm*', 'lm_head*'")


def apply_freeze(model, options, tokenizer, added):
    for p in model.parameters():
        p.requires_grad_(False)
    if options.train_last_layers:
        blocks = transformer_blocks(model, "method freeze", "; use train_patterns")
        if options.train_last_layers > len(blocks):
            raise ConfigError(f"method.train_last_layers: {options.train_last_layers} > the model's {len(blocks)} blocks")
        for block in blocks[len(blocks) - options.train_last_layers :]:
            for p in block.parameters():
                p.requires_grad_(True)
    for pattern in options.train_patterns:
        matched = [p for name, p in model.named_parameters() if fnmatch(name, pattern)]
        if not matched:
            names = sorted({n.rsplit(".", 1)[0].split(".")[-1] for n, _ in model.named_parameters()})
            raise ConfigError(f"method.train_patterns: {pattern!r} matches no parameter; module names include: {', '.join(names[:20])}")
        for p in matched:
            p.requires_grad_(True)
    for head in added.heads + added.extra:  # a task's new head and layers always train
        module = getattr(model, head, None)
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("method freeze: nothing would train; set method.train_last_layers > 0 or method.train_patterns")
    return model


register_method(Method("freeze", FreezeMethod, apply_freeze, freezes_base=False, saves="model",
                       plan=PlanFacts(activation_units=7.2, weights="trained")))
