"""Freezing: only the last N transformer blocks and parameters matching name patterns train."""

from __future__ import annotations

from fnmatch import fnmatch

import torch

from lmtune.errors import ConfigError
from lmtune.methods import METHODS, Method


# The head transformers adds for sequence / token classification (`score` on decoders, `classifier` on
# encoders), and a task's own layer on top of it (token_cls: `crf`).
CLASSIFIER_HEADS = ("score", "classifier", "crf")


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The list of transformer blocks: the ModuleList as long as the config's layer count."""
    layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return module
    raise ConfigError("method freeze: cannot find this model's list of transformer blocks; use train_patterns")


def apply_freeze(model, options, tokenizer):
    for p in model.parameters():
        p.requires_grad_(False)
    if options.train_last_layers:
        blocks = transformer_blocks(model)
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
    for head in CLASSIFIER_HEADS:  # a newly added classification head always trains
        module = getattr(model, head, None)
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("method freeze: nothing would train; set method.train_last_layers > 0 or method.train_patterns")
    return model


METHODS.register("freeze")(Method(apply_freeze, freezes_base=False, merge="plain"))
