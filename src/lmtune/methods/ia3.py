"""IA3: learned scaling vectors on keys, values and feed-forward activations."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from lmtune.errors import ConfigError
from lmtune.methods import Method, PlanFacts, register_method
from lmtune.methods.peft_common import check_target_modules, task_type_of, wrap
from lmtune.sections import Section


class IA3Method(Section):
    """IA3: learned scaling vectors on keys, values and feed-forward activations."""

    name: Literal["ia3"] = "ia3"
    target_modules: Optional[list[str]] = Field(None, description="default: peft's choice for the model family")
    feedforward_modules: Optional[list[str]] = Field(None, description="the target modules that are feed-forward layers")


def apply_ia3(model, options, tokenizer, added):
    from peft import IA3Config

    check_target_modules(model, options.target_modules)
    if options.feedforward_modules and not options.target_modules:
        raise ConfigError("method.feedforward_modules needs method.target_modules (it must be a subset of them)")
    config = IA3Config(target_modules=options.target_modules, feedforward_modules=options.feedforward_modules,
                       task_type=task_type_of(model))
    try:
        return wrap(model, config, added)
    except ValueError as e:  # peft has no default targets for this model family
        raise ConfigError(f"method ia3: {str(e).splitlines()[0]}; set method.target_modules and method.feedforward_modules") from None


register_method(Method("ia3", IA3Method, apply_ia3, freezes_base=True, mergeable=True, shareable=True,
                       plan=PlanFacts(adapts_blocks=True)))
