"""What the peft methods share: the model's linear layers, target checks, peft's task type, and
wrapping a model with a peft config."""

from __future__ import annotations

import torch

from lmtune.errors import ConfigError
from lmtune.methods import AddedModules
from lmtune.methods.fast_dropout import use_fast_dropout


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
    if getattr(model, "base_model", None) is model:  # a bare encoder / decoder, no head (task embedding)
        return "FEATURE_EXTRACTION"
    return "CAUSAL_LM"


def lora_targets(model, target_modules, heads: tuple[str, ...], names: bool = False):
    """peft's "all-linear" may put LoRA on a classification head (a Linear too), which then cannot
    be trained whole; on classification models lmtune names the linear layers itself, heads left out.
    `names`: "all-linear" as that list on any model (where peft needs a list)."""
    if target_modules != "all-linear" or (task_type_of(model) == "CAUSAL_LM" and not names):
        return target_modules
    return [n for n in linear_module_names(model) if n not in heads]


def wrap(model, config, added: AddedModules):
    from peft import get_peft_model

    extra = [m for m in added.extra if hasattr(model, m)]
    if extra:  # a task's own layers (token_cls: crf) train and are saved with the adapter
        # Naming the head too keeps "all-linear" LoRA off it, as peft does when it picks the head itself.
        heads = [h for h in added.heads if hasattr(model, h)]
        config.modules_to_save = list(config.modules_to_save or []) + extra + heads
    model = get_peft_model(model, config)
    use_fast_dropout(model)  # the same dropout, with cheaper random masks on a CPU
    fused_lora(model)  # the same LoRA layers, each one autograd node computed in the base's dtype
    return model


def fused_lora(model) -> int:
    """Plain LoRA layers through methods/fused_lora.py (bench/levers.py turns this off to measure it)."""
    from lmtune.methods.fused_lora import use_fused_lora

    return use_fused_lora(model)


