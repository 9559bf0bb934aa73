"""Prompt tuning: N trainable virtual token embeddings before each row."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from lmtune.methods import Method, register_method
from lmtune.methods.peft_common import task_type_of, wrap
from lmtune.sections import Section


class PromptTuningMethod(Section):
    """N trainable virtual token embeddings before the input."""

    name: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(20, gt=0)
    init_text: Optional[str] = Field(None, description="initialise the virtual tokens from this text (default: random)")


def apply_prompt_tuning(model, options, tokenizer, added):
    from peft import PromptTuningConfig, PromptTuningInit

    init = {"prompt_tuning_init": PromptTuningInit.RANDOM}
    if options.init_text:
        init = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": options.init_text,
                "tokenizer_name_or_path": tokenizer.name_or_path}
    config = PromptTuningConfig(num_virtual_tokens=options.num_virtual_tokens, task_type=task_type_of(model), **init)
    return wrap(model, config, added)


register_method(Method("prompt_tuning", PromptTuningMethod, apply_prompt_tuning, freezes_base=True, virtual_tokens="sequence"))
