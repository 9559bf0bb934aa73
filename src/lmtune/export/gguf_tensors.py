"""A transformers model's weights and hyper-parameters as GGUF names, layouts and types.

Supported: the Llama family (Llama, SmolLM, Mistral: GGUF architecture `llama`) and Qwen2
(`qwen2`). Their tensors map one to one onto GGUF's names; what differs is the rotary layout:
transformers rotates the two halves of each head (rotate_half), llama.cpp's `llama` architecture
rotates interleaved pairs, so the rows of q and k are reordered per head to match (Qwen2 uses
llama.cpp's NEOX rotation, the halves, and keeps them as they are).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmtune.errors import ConfigError

# transformers model_type -> (GGUF architecture, q/k rows reordered for interleaved rotation)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}

LAYER_TENSORS = {  # transformers name inside model.layers.N -> GGUF name inside blk.N
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
MODEL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}

# --quant -> (GGML type of the 2D weights, GGML type of token_embd / output, llama.cpp file type)
QUANTS = {
    "f32": ("F32", "F32", "ALL_F32"),
    "f16": ("F16", "F16", "MOSTLY_F16"),
    "bf16": ("BF16", "BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "Q8_0", "MOSTLY_Q8_0"),
    # 4- and 5-bit files keep the embedding (also the output layer when tied) at 8 bits, as the
    # published SmolLM2 Q4_1 file does: the most sensitive matrix, a small share of the bytes
    "q4_0": ("Q4_0", "Q8_0", "MOSTLY_Q4_0"),
    "q4_1": ("Q4_1", "Q8_0", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "Q8_0", "MOSTLY_Q5_0"),
    "q5_1": ("Q5_1", "Q8_0", "MOSTLY_Q5_1"),
}


@dataclass
class Shape:
    arch: str
    permute: bool
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    context: int
    rope_theta: float
    rms_eps: float
    vocab: int
    tied: bool


def shape_of(config) -> Shape:
    """The hyper-parameters GGUF needs; anything this converter cannot express is refused by name."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"GGUF export supports {', '.join(sorted(ARCHITECTURES))} models; this one is {model_type!r}. "
                          "Export a safetensors directory instead (lmtune export without --format gguf)")
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in (None, "default"):
        raise ConfigError(f"GGUF export: rope scaling {kind!r} is not supported yet (only unscaled rotary embeddings)")
    arch, permute = ARCHITECTURES[model_type]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim * heads != config.hidden_size:
        raise ConfigError("GGUF export: heads × head_dim must equal the hidden size for the llama layout")
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return Shape(arch, permute, config.num_hidden_layers, heads, getattr(config, "num_key_value_heads", None) or heads,
                 head_dim, config.hidden_size, config.intermediate_size, config.max_position_embeddings, float(theta),
                 float(config.rms_norm_eps), config.vocab_size, bool(getattr(config, "tie_word_embeddings", False)))


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of q or k from rotate_half order (each head: first half, second half) to interleaved
    pairs (x0, x_d/2, x1, x_d/2+1 ...), the order llama.cpp's rotation reads."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_name(name: str, shape: Shape) -> str | None:
    """The GGUF name of a transformers tensor; None for what the file leaves out (the output layer
    when it is the embedding: llama.cpp then reads token_embd for it)."""
    if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and shape.tied):
        return None
    if name in MODEL_TENSORS:
        return MODEL_TENSORS[name]
    parts = name.split(".")
    local = ".".join(parts[3:])
    if parts[:2] != ["model", "layers"] or local not in LAYER_TENSORS:
        raise ConfigError(f"GGUF export: no GGUF name for tensor {name!r} of this {shape.arch} model")
    return f"blk.{parts[2]}.{LAYER_TENSORS[local]}"


def convert(name: str, array: np.ndarray, shape: Shape) -> np.ndarray:
    """A tensor's values in the layout llama.cpp reads (q and k rows reordered for the llama rotation)."""
    if shape.permute and ".self_attn.q_proj." in name:
        return interleave_rotary(array, shape.heads)
    if shape.permute and ".self_attn.k_proj." in name:
        return interleave_rotary(array, shape.kv_heads)
    return array


def ggml_type(gguf_name: str, dims: tuple[int, ...], quant: str):
    """The GGML type a tensor is written in: 1-D tensors (norms, biases) in F32; matrices in the
    chosen type, the embedding / output at the 8-bit floor of 4- and 5-bit files; F16 for a matrix
    whose rows do not split into the type's blocks."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(dims) < 2:
        return GGMLQuantizationType.F32
    weights, embedding, _ = QUANTS[quant]
    kind = GGMLQuantizationType[embedding if gguf_name in ("token_embd.weight", "output.weight") else weights]
    if dims[-1] % GGML_QUANT_SIZES[kind][0]:
        return GGMLQuantizationType.F16
    return kind
