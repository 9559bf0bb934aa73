"""Prefix tuning: trainable key/value prefixes at every layer, reparametrised through an MLP."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmtune.errors import ConfigError
from lmtune.methods import Method, register_method
from lmtune.methods.peft_common import task_type_of, wrap
from lmtune.sections import Section


class PrefixTuningMethod(Section):
    """Trainable key/value prefixes at every layer, reparametrised through an MLP (Prefix-Tuning)."""

    name: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, gt=0)
    encoder_hidden_size: int = Field(512, gt=0)


def wrap_prefix(model, config, added, name: str):
    """Prefixes travel as a key/value cache, which the model class must name in its forward
    (peft checks it only at the first forward pass; lmtune says so before training starts)."""
    import inspect

    if task_type_of(model) != "CAUSAL_LM" and "past_key_values" not in inspect.signature(model.forward).parameters:
        raise ConfigError(f"method {name}: {type(model).__name__} takes no key/value cache in its forward, which prefix "
                          "methods need; use prompt_tuning, p_tuning or lora")
    return wrap(model, config, added)


def apply_prefix_tuning(model, options, tokenizer, added):
    from peft import PrefixTuningConfig

    config = PrefixTuningConfig(num_virtual_tokens=options.num_virtual_tokens, prefix_projection=True,
                                encoder_hidden_size=options.encoder_hidden_size, task_type=task_type_of(model))
    return wrap_prefix(model, config, added, "prefix_tuning")


register_method(Method("prefix_tuning", PrefixTuningMethod, apply_prefix_tuning, freezes_base=True, virtual_tokens="cache"))
