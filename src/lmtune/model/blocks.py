"""Finding a model's transformer blocks: the one way lmtune does it (freezing, keep_layers,
torch.compile, the planner's shape)."""

from __future__ import annotations

import torch

from lmtune.errors import ConfigError


def named_blocks(model) -> tuple[str, torch.nn.ModuleList]:
    """(its name, the ModuleList of blocks): the ModuleList as long as the config's layer count."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return name, module
    raise LookupError(type(base).__name__)


def named_transformer_blocks(model, who: str, remedy: str = "") -> tuple[str, torch.nn.ModuleList]:
    """named_blocks, or a one-line error naming the setting (`who`) that needed them."""
    try:
        return named_blocks(model)
    except LookupError as e:
        raise ConfigError(f"{who}: cannot find the list of transformer blocks of {e}{remedy}") from None


def transformer_blocks(model, who: str, remedy: str = "") -> torch.nn.ModuleList:
    """The blocks, or a one-line error naming the setting (`who`) that needed them."""
    return named_transformer_blocks(model, who, remedy)[1]
