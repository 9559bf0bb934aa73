"""The peft methods, one builder each: lora, dora, qlora, ia3, prompt_tuning, p_tuning,
prefix_tuning, p_tuning_v2."""

from __future__ import annotations

import torch

from lmtune.errors import ConfigError
from lmtune.methods import METHODS, Method


def linear_module_names(model) -> list[str]:
    """The distinct last name parts of the model's linear layers (q_proj, c_attn ...), no LM head."""
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if name and module is not output and (isinstance(module, (torch.nn.Linear, Conv1D)) or _is_4bit_linear(module)):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _is_4bit_linear(module) -> bool:
    return type(module).__name__ == "Linear4bit"


def check_target_modules(model, target_modules) -> None:
    if target_modules is None or target_modules == "all-linear":
        return
    if isinstance(target_modules, str):
        raise ConfigError("method.target_modules: give 'all-linear' or a list of module names")
    known = linear_module_names(model)
    missing = [t for t in target_modules if t.rsplit(".", 1)[-1] not in known]
    if missing:
        raise ConfigError(f"method.target_modules: {missing} match no linear module of this model; its linear modules are: {', '.join(known)}")


def _lora_config(options, use_dora: bool):
    from peft import LoraConfig

    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        use_rslora=options.use_rslora,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )


def _wrap(model, config):
    from peft import get_peft_model

    return get_peft_model(model, config)


def apply_lora(model, options, tokenizer):
    check_target_modules(model, options.target_modules)
    return _wrap(model, _lora_config(options, use_dora=False))


def apply_dora(model, options, tokenizer):
    check_target_modules(model, options.target_modules)
    return _wrap(model, _lora_config(options, use_dora=True))


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


def apply_qlora(model, options, tokenizer):
    from peft import prepare_model_for_kbit_training

    # Gradient checkpointing is the Trainer's business (train.gradient_checkpointing), not peft's.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return apply_lora(model, options, tokenizer)


def apply_ia3(model, options, tokenizer):
    from peft import IA3Config

    check_target_modules(model, options.target_modules)
    if options.feedforward_modules and not options.target_modules:
        raise ConfigError("method.feedforward_modules needs method.target_modules (it must be a subset of them)")
    config = IA3Config(target_modules=options.target_modules, feedforward_modules=options.feedforward_modules, task_type="CAUSAL_LM")
    try:
        return _wrap(model, config)
    except ValueError as e:  # peft has no default targets for this model family
        raise ConfigError(f"method ia3: {str(e).splitlines()[0]}; set method.target_modules and method.feedforward_modules") from None


def apply_prompt_tuning(model, options, tokenizer):
    from peft import PromptTuningConfig, PromptTuningInit

    init = {"prompt_tuning_init": PromptTuningInit.RANDOM}
    if options.init_text:
        init = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": options.init_text,
                "tokenizer_name_or_path": tokenizer.name_or_path}
    return _wrap(model, PromptTuningConfig(num_virtual_tokens=options.num_virtual_tokens, task_type="CAUSAL_LM", **init))


def apply_p_tuning(model, options, tokenizer):
    from peft import PromptEncoderConfig

    config = PromptEncoderConfig(
        num_virtual_tokens=options.num_virtual_tokens,
        encoder_reparameterization_type=options.encoder.upper(),
        encoder_hidden_size=options.encoder_hidden_size,
        task_type="CAUSAL_LM",
    )
    return _wrap(model, config)


def apply_prefix_tuning(model, options, tokenizer):
    from peft import PrefixTuningConfig

    config = PrefixTuningConfig(num_virtual_tokens=options.num_virtual_tokens, prefix_projection=True,
                                encoder_hidden_size=options.encoder_hidden_size, task_type="CAUSAL_LM")
    return _wrap(model, config)


def apply_p_tuning_v2(model, options, tokenizer):
    from peft import PrefixTuningConfig

    # P-Tuning v2 is prefix tuning at every layer without the MLP reparametrisation.
    return _wrap(model, PrefixTuningConfig(num_virtual_tokens=options.num_virtual_tokens, prefix_projection=False, task_type="CAUSAL_LM"))


METHODS.register("lora")(Method(apply_lora, freezes_base=True, merge="yes"))
METHODS.register("dora")(Method(apply_dora, freezes_base=True, merge="yes"))
METHODS.register("qlora")(Method(apply_qlora, freezes_base=True, merge="yes", quantization=qlora_quantization))
METHODS.register("ia3")(Method(apply_ia3, freezes_base=True, merge="yes"))
METHODS.register("prompt_tuning")(Method(apply_prompt_tuning, freezes_base=True))
METHODS.register("p_tuning")(Method(apply_p_tuning, freezes_base=True))
METHODS.register("prefix_tuning")(Method(apply_prefix_tuning, freezes_base=True))
METHODS.register("p_tuning_v2")(Method(apply_p_tuning_v2, freezes_base=True))


def virtual_tokens_in_sequence(model) -> int:
    """How many virtual tokens peft puts before each row (prompt tuning, P-tuning); prefix methods
    pass theirs as a key/value cache instead, so the sequence itself is not longer."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    return 0 if config.peft_type.value == "PREFIX_TUNING" else config.num_virtual_tokens
