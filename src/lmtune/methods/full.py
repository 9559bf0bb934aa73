"""Full fine-tuning: every weight trains; the run saves a whole model."""

from typing import Literal

from lmtune.methods import Method, PlanFacts, register_method
from lmtune.sections import Section


class FullMethod(Section):
    """Every weight trains."""

    name: Literal["full"] = "full"


def apply_full(model, options, tokenizer, added):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register_method(Method("full", FullMethod, apply_full, freezes_base=False, saves="model",
                       plan=PlanFacts(activation_units=7.2, weights="trained", trains_base=True, lighter="qlora")))
