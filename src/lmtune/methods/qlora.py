"""QLoRA: LoRA on a base quantised to 4 bits (NF4) by bitsandbytes, on a GPU or a CPU."""

from __future__ import annotations

from dataclasses import replace

import torch

from lmtune.errors import ConfigError
from lmtune.methods import Method, register_method
from lmtune.methods.lora import LORA_PLAN, LoraMethod, apply_lora, check_lora


def qlora_quantization(options, compute_dtype: torch.dtype):
    """The base in 4-bit (NF4 by default) with double quantisation; matmuls in the run's precision."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("method qlora needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def apply_qlora(model, options, tokenizer, added):
    # peft's prepare_model_for_kbit_training is not used: it casts every weight that is not 4-bit
    # (embeddings, LM head, norms) to fp32, 4 bytes per parameter where the frozen base otherwise
    # keeps 2 (4.2 GB more on Llama-3-8B), a precaution for fp16 that bf16 does not need. The base
    # stays as loaded (frozen, in the run's 16-bit dtype); gradient checkpointing is the Trainer's.
    for p in model.parameters():
        p.requires_grad_(False)
    return apply_lora(model, options, tokenizer, added)


register_method(Method("qlora", LoraMethod, apply_qlora, freezes_base=True, mergeable=True, quantization=qlora_quantization,
                       check=check_lora,
                       # the 4-bit base cannot be built on the meta device; LoRA there trains the same matrices.
                       # peft's 4-bit path keeps more than the fused 16-bit one: dropout's units are 5.2 here.
                       plan=replace(LORA_PLAN, activation_units=14.1, dropout_units=5.2, weights="4bit", lighter=None,
                                    meta_stand_in="lora")))
