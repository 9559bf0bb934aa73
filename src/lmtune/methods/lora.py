"""LoRA through peft: W' = W + (alpha / r) * B A on the chosen linear layers."""

from __future__ import annotations

import torch

from lmtune.errors import ConfigError
from lmtune.methods import METHODS, Method


def linear_module_names(model) -> list[str]:
    """The distinct last name parts of the model's linear layers (q_proj, c_attn ...), no LM head."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and name:
            names.add(name.rsplit(".", 1)[-1])
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is output:
            names.discard(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model, target_modules) -> None:
    if isinstance(target_modules, str):
        if target_modules != "all-linear":
            raise ConfigError("method.target_modules: give 'all-linear' or a list of module names")
        return
    known = linear_module_names(model)
    missing = [t for t in target_modules if t not in known]
    if missing:
        raise ConfigError(f"method.target_modules: {missing} match no linear module of this model; its linear modules are: {', '.join(known)}")


def apply_lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    check_target_modules(model, cfg.target_modules)
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


METHODS.register("lora")(Method(apply_lora, freezes_base=True))
