"""Memory and time of a training run from the model's shape, the method and the batch: arithmetic
only. The activation, logits and process constants were fitted to measured peak RSS of 16 SmolLM2
runs on this project's CPU (bench/planner.py; docs/planner.md has the table)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmtune.methods import METHODS
from lmtune.optimizers import OPTIMIZERS
from lmtune.plan.shape import ModelShape

GB = 1024**3

# 4-bit NF4 weights: half a byte, plus one absmax per 64 weights (fp32, or 8-bit with double quantisation).
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
# Activation bytes kept for the backward pass, per token and per transformer block, are each
# method's PlanFacts (methods/*.py), in units of (4 x hidden + intermediate), fitted by bench/planner.py.
# Per target position and vocabulary entry: the 16-bit logits the loss keeps and their 16-bit gradient
# (tasks/token_cross_entropy.py upcasts a few rows at a time). It was 5.3, fitted, while the loss
# made fp32 copies; 4 is the two 16-bit buffers, checked on the held-out grid (docs/planner.md).
LOGIT_BYTES = 4.0
# What a training process holds besides the model (Python, torch, transformers, the data): CPU RSS.
PROCESS_OVERHEAD = {"cpu": 0.6 * GB, "cuda": 0.5 * GB}


@dataclass
class Batch:
    size: int  # rows per micro-batch
    length: int  # tokens of the longest row (the peak)
    mean_length: float  # tokens of an average row (the time)
    targets: float  # tokens with a loss per row (the LM head runs only there)
    virtual_tokens: int = 0  # prompt tuning / P-tuning put these before each row
    padded_length: float | None = None  # tokens a row is computed at, padding included (the time); None: mean_length

    @property
    def computed_length(self) -> float:
        return (self.padded_length or self.mean_length) + self.virtual_tokens


@dataclass
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    parts: dict = field(default_factory=dict)

    @property
    def peak(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead


def weight_bytes(shape: ModelShape, method: str, trainable: int, precision: str, double_quant: bool = True) -> float:
    low = 4 if precision == "fp32" else 2
    kind = METHODS.get(method).plan.weights
    if kind == "trained":
        # fp32 master weights; under autocast every linear weight also has a 16-bit copy kept for backward.
        return shape.total_params * 4 + (0 if precision == "fp32" else (shape.block_linear_params + shape.head_params) * 2)
    if kind == "4bit":
        # What is not 4-bit (embeddings, LM head, norms) stays in the 16-bit dtype (methods/qlora.py).
        rest = shape.total_params - shape.block_linear_params
        return shape.block_linear_params * NF4_BYTES[double_quant] + rest * low + trainable * 4
    return (shape.total_params - trainable) * low + trainable * 4


def activation_bytes(shape: ModelShape, method: str, batch: Batch, attention: str, checkpointing: bool,
                     lora_dropout: float = 0.0, backward: float = 1.0) -> float:
    """`backward`: the share of the blocks that keep anything for the backward pass (shape.backward_share)."""
    facts = METHODS.get(method).plan
    units = facts.activation_units + (facts.dropout_units if lora_dropout > 0 else 0.0)
    length = batch.length + batch.virtual_tokens
    tokens = batch.size * length
    per_layer = tokens * units * (4 * shape.hidden + shape.intermediate)
    if attention == "eager":  # the softmax output in fp32 and its 16-bit copy, per head
        per_layer += batch.size * shape.heads * length * length * 6
    layers = shape.layers * backward
    if checkpointing:  # only each block's input is kept; one block is recomputed at a time
        return tokens * layers * shape.hidden * 2 + per_layer
    return per_layer * layers


def memory(shape: ModelShape, method: str, trainable: int, batch: Batch, *, precision: str = "bf16",
           optimizer: str = "adamw", attention: str = "sdpa", checkpointing: bool = False,
           device: str = "cpu", double_quant: bool = True, lora_dropout: float = 0.0, backward: float = 1.0) -> Memory:
    return Memory(
        weights=weight_bytes(shape, method, trainable, precision, double_quant),
        gradients=trainable * 4,
        optimizer=trainable * OPTIMIZERS[optimizer].state_bytes,
        activations=activation_bytes(shape, method, batch, attention, checkpointing, lora_dropout, backward),
        logits=batch.size * batch.targets * shape.vocab * LOGIT_BYTES,  # the LM head runs at targets only
        overhead=PROCESS_OVERHEAD["cuda" if device == "cuda" else "cpu"],
    )


def flops_per_step(shape: ModelShape, method: str, trainable: int, batch: Batch, checkpointing: bool,
                   backward: float = 1.0) -> float:
    """Forward 2N per computed token (padding included); backward 2N for the input gradients, plus 2N where weights train,
    through the `backward` share of the blocks (shape.backward_share). Attention adds about 6 x length x hidden per token and
    layer (2 forward, 4 backward); the LM head runs on targets only."""
    tokens = batch.size * batch.computed_length
    trained_block = shape.block_params if METHODS.get(method).plan.trains_base else min(trainable, shape.block_params)
    per_token = 2 * shape.block_params + backward * 2 * shape.block_params + 2 * trained_block
    if checkpointing:
        per_token += backward * 2 * shape.block_params  # the forward pass again
    attention = (2 + 4 * backward) * shape.layers * batch.computed_length * shape.hidden
    return tokens * (per_token + attention) + head_flops(shape, method, batch)


def head_flops(shape: ModelShape, method: str, batch: Batch) -> float:
    """The LM head at the target positions: forward, input gradient, and its weight gradient when it trains."""
    return batch.size * batch.targets * shape.head_params * (6 if METHODS.get(method).plan.trains_base else 4)
