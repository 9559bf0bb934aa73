"""P-Tuning v2: deep prompts at every layer, prefix tuning without the MLP reparametrisation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmtune.methods import Method, register_method
from lmtune.methods.peft_common import task_type_of
from lmtune.methods.prefix_tuning import wrap_prefix
from lmtune.sections import Section


class PTuningV2Method(Section):
    """Deep prompts at every layer without reparametrisation (P-Tuning v2)."""

    name: Literal["p_tuning_v2"] = "p_tuning_v2"
    num_virtual_tokens: int = Field(20, gt=0)


def apply_p_tuning_v2(model, options, tokenizer, added):
    from peft import PrefixTuningConfig

    config = PrefixTuningConfig(num_virtual_tokens=options.num_virtual_tokens, prefix_projection=False,
                                task_type=task_type_of(model))
    return wrap_prefix(model, config, added, "p_tuning_v2")


register_method(Method("p_tuning_v2", PTuningV2Method, apply_p_tuning_v2, freezes_base=True, virtual_tokens="cache"))
