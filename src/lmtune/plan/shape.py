"""What the planner knows about a model: its config and its parameters, built on the meta device
(shapes only, no memory), and the parameters a method trains, found by applying the method there."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmtune.model.blocks import named_blocks


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
    try:
        prefix = named_blocks(model)[0] + "."
    except LookupError:  # a model cut to no blocks (the planner times the head alone)
        prefix = None
    blocks = {n: p for n, p in params.items() if prefix and n.startswith(prefix)}
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


def meta_buildable(method_cfg):
    """The method, or one that trains the same parameters and builds on the meta device (QLoRA's
    4-bit base cannot be: LoRA trains the same matrices)."""
    from lmtune.methods import METHODS

    stand_in = METHODS.get(method_cfg.name).plan.meta_stand_in
    return METHODS.get(stand_in).options(**{**method_cfg.model_dump(), "name": stand_in}) if stand_in else method_cfg


@dataclass
class Trained:
    params: int  # parameters the method trains
    backward: float  # the share of the blocks the backward pass runs through (backward_share)


def trained(config, method_cfg, tokenizer=None) -> Trained:
    """What the method trains: the method applied to a meta-device model, as `lmtune train` applies it."""
    from lmtune.training.prepare import apply_method

    model = apply_method(meta_buildable(method_cfg), meta_model(config), tokenizer)
    return Trained(sum(p.numel() for p in model.parameters() if p.requires_grad), backward_share(model))


def backward_share(model) -> float:
    """The share of the blocks that the backward pass runs through: from the lowest block holding
    a trained parameter up (freeze's last blocks, LoRA's `last_layers`); the blocks below run
    forward only and keep nothing. A trained parameter outside the blocks feeds them from below
    (input embeddings, a prompt encoder, an LM head tied to the embeddings) or cannot be placed:
    every block then. An untied LM head alone needs none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        blocks = named_blocks(base)[1]
    except LookupError:  # blocks the planner cannot find: assume the whole depth
        return 1.0
    block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    head, embeddings = base.get_output_embeddings(), base.get_input_embeddings()
    above = {id(p) for p in head.parameters()} if head is not None and head.weight is not embeddings.weight else set()
    lowest = len(blocks)
    for p in model.parameters():
        if not p.requires_grad or id(p) in above:
            continue
        if id(p) not in block_of:
            return 1.0
        lowest = min(lowest, block_of[id(p)])
    return (len(blocks) - lowest) / len(blocks)
