"""What the planner knows about a model: its config and its parameters, built on the meta device
(shapes only, no memory), and the parameters a method trains, found by applying the method there."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    total_params: int
    block_params: int  # in the transformer blocks (what every token passes through)
    block_linear_params: int  # the blocks' linear weights (what QLoRA stores in 4 bits)
    head_params: int  # the LM head (tied to the embedding or not)
    tied: bool


def config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def meta_model(config):
    """The model with every tensor on the meta device: a 70B config costs nothing to build."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_shape(config, model=None) -> ModelShape:
    model = model if model is not None else meta_model(config)
    hidden = config_value(config, "hidden_size", "n_embd")
    heads = config_value(config, "num_attention_heads", "n_head")
    params = dict(model.named_parameters(remove_duplicate=False))
    unique = {id(p): p for p in params.values()}
    blocks = {n: p for n, p in params.items() if ".layers." in n or ".h." in n}
    head = model.get_output_embeddings().weight
    return ModelShape(
        layers=config_value(config, "num_hidden_layers", "n_layer"),
        hidden=hidden,
        intermediate=config_value(config, "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden,
        heads=heads,
        kv_heads=config_value(config, "num_key_value_heads", default=heads),
        vocab=config.vocab_size,
        total_params=sum(p.numel() for p in unique.values()),
        block_params=sum(p.numel() for p in blocks.values()),
        block_linear_params=sum(p.numel() for p in blocks.values() if p.dim() == 2),
        head_params=head.numel(),
        tied=head is model.get_input_embeddings().weight,
    )


def lora_like(method_cfg):
    """QLoRA trains the same LoRA matrices as LoRA; its 4-bit base cannot be built on the meta device."""
    from lmtune.config import LoraMethod

    if method_cfg.name == "qlora":
        return LoraMethod(**{**method_cfg.model_dump(), "name": "lora"})
    return method_cfg


def trainable_params(config, method_cfg, tokenizer=None) -> int:
    """Parameters the method trains: the method applied to a meta-device model."""
    from lmtune.methods import METHODS

    method_cfg = lora_like(method_cfg)
    model = meta_model(config)
    model = METHODS.get(method_cfg.name).apply(model, method_cfg, tokenizer)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
