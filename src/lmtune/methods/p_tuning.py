"""P-tuning: virtual tokens produced by a prompt encoder (an MLP or an LSTM) before each row."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmtune.methods import Method, register_method
from lmtune.methods.peft_common import task_type_of, wrap
from lmtune.sections import Section


class PTuningMethod(Section):
    """Virtual tokens produced by a prompt encoder (MLP or LSTM)."""

    name: Literal["p_tuning"] = "p_tuning"
    num_virtual_tokens: int = Field(20, gt=0)
    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_hidden_size: int = Field(128, gt=0)


def apply_p_tuning(model, options, tokenizer, added):
    from peft import PromptEncoderConfig

    config = PromptEncoderConfig(
        num_virtual_tokens=options.num_virtual_tokens,
        encoder_reparameterization_type=options.encoder.upper(),
        encoder_hidden_size=options.encoder_hidden_size,
        task_type=task_type_of(model),
    )
    return wrap(model, config, added)


register_method(Method("p_tuning", PTuningMethod, apply_p_tuning, freezes_base=True, virtual_tokens="sequence"))
