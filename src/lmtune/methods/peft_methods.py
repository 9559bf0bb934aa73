"""The peft methods, one builder each: lora, dora, qlora, ia3, prompt_tuning, p_tuning,
prefix_tuning, p_tuning_v2."""

from __future__ import annotations

import torch

from lmtune.methods.fast_dropout import use_fast_dropout

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


def task_type_of(model) -> str:
    """peft's task type from the model class: it decides which head peft keeps trainable
    (modules_to_save: `score` / `classifier`) and how prompt methods treat the inputs."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    return "CAUSAL_LM"


def lora_targets(model, target_modules):
    """peft's "all-linear" may put LoRA on a classification head (a Linear too), which then cannot
    be trained whole; on classification models lmtune names the linear layers itself, heads left out."""
    if target_modules != "all-linear" or task_type_of(model) == "CAUSAL_LM":
        return target_modules
    return [n for n in linear_module_names(model) if n not in ("classifier", "score")]


def _lora_config(options, use_dora: bool, task_type: str, target_modules=None):
    from peft import LoraConfig

    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target_modules or options.target_modules,
        use_rslora=options.use_rslora,
        use_dora=use_dora,
        task_type=task_type,
    )


def _wrap(model, config):
    from peft import get_peft_model

    if hasattr(model, "crf"):  # a task's own layer (token_cls) trains and is saved with the adapter
        # Naming the head too keeps "all-linear" LoRA off it, as peft does when it picks the head itself.
        heads = [h for h in ("classifier", "score") if hasattr(model, h)]
        config.modules_to_save = list(config.modules_to_save or []) + ["crf"] + heads
    model = get_peft_model(model, config)
    use_fast_dropout(model)  # the same dropout, with cheaper random masks on a CPU
    return model


def apply_lora(model, options, tokenizer):
    check_target_modules(model, options.target_modules)
    return _wrap(model, _lora_config(options, False, task_type_of(model), lora_targets(model, options.target_modules)))


def apply_dora(model, options, tokenizer):
    check_target_modules(model, options.target_modules)
    return _wrap(model, _lora_config(options, True, task_type_of(model), lora_targets(model, options.target_modules)))


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
    # peft's prepare_model_for_kbit_training is not used: it casts every weight that is not 4-bit
    # (embeddings, LM head, norms) to fp32, 4 bytes per parameter where the frozen base otherwise
    # keeps 2 (4.2 GB more on Llama-3-8B), a precaution for fp16 that bf16 does not need. The base
    # stays as loaded (frozen, in the run's 16-bit dtype); gradient checkpointing is the Trainer's.
    for p in model.parameters():
        p.requires_grad_(False)
    return apply_lora(model, options, tokenizer)


def apply_ia3(model, options, tokenizer):
    from peft import IA3Config

    check_target_modules(model, options.target_modules)
    if options.feedforward_modules and not options.target_modules:
        raise ConfigError("method.feedforward_modules needs method.target_modules (it must be a subset of them)")
    config = IA3Config(target_modules=options.target_modules, feedforward_modules=options.feedforward_modules, task_type=task_type_of(model))
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
    return _wrap(model, PromptTuningConfig(num_virtual_tokens=options.num_virtual_tokens, task_type=task_type_of(model), **init))


def apply_p_tuning(model, options, tokenizer):
    from peft import PromptEncoderConfig

    config = PromptEncoderConfig(
        num_virtual_tokens=options.num_virtual_tokens,
        encoder_reparameterization_type=options.encoder.upper(),
        encoder_hidden_size=options.encoder_hidden_size,
        task_type=task_type_of(model),
    )
    return _wrap(model, config)


def apply_prefix_tuning(model, options, tokenizer):
    from peft import PrefixTuningConfig

    config = PrefixTuningConfig(num_virtual_tokens=options.num_virtual_tokens, prefix_projection=True,
                                encoder_hidden_size=options.encoder_hidden_size, task_type=task_type_of(model))
    return _wrap_prefix(model, config, "prefix_tuning")


def apply_p_tuning_v2(model, options, tokenizer):
    from peft import PrefixTuningConfig

    # P-Tuning v2 is prefix tuning at every layer without the MLP reparametrisation.
    config = PrefixTuningConfig(num_virtual_tokens=options.num_virtual_tokens, prefix_projection=False, task_type=task_type_of(model))
    return _wrap_prefix(model, config, "p_tuning_v2")


def _wrap_prefix(model, config, name: str):
    """Prefixes travel as a key/value cache, which the model class must name in its forward
    (peft checks it only at the first forward pass; lmtune says so before training starts)."""
    import inspect

    if task_type_of(model) != "CAUSAL_LM" and "past_key_values" not in inspect.signature(model.forward).parameters:
        raise ConfigError(f"method {name}: {type(model).__name__} takes no key/value cache in its forward, which prefix "
                          "methods need; use prompt_tuning, p_tuning or lora")
    return _wrap(model, config)


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
