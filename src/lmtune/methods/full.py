"""Full fine-tuning: every weight trains."""

from lmtune.methods import METHODS, Method


def apply_full(model, options, tokenizer):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


METHODS.register("full")(Method(apply_full, freezes_base=False, merge="plain"))
