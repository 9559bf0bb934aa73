"""Optimizers by name, in one table: the class and keyword arguments the Trainer builds its optimizer
from (it keeps making the parameter groups: no weight decay on biases and norms), and the bytes of
state each keeps per trained parameter (the planner). train.optimizer takes the names of this table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lmtune.errors import ConfigError


@dataclass(frozen=True)
class Optimizer:
    build: Callable[[Any], tuple[type, dict]]  # (the train section) -> (optimizer class, keyword arguments)
    state_bytes: float  # optimizer state per trained parameter


def _torch(name: str, *keys: str) -> Callable[[Any], tuple[type, dict]]:
    """A torch.optim class with lr and the named settings of the train section."""
    def build(t):
        import torch

        settings = {"betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon, "momentum": t.momentum, "nesterov": t.nesterov,
                    # One kernel over all the parameters instead of a loop over hundreds of small LoRA
                    # tensors: 11 ms instead of 28 ms a step for SmolLM2's 420 (docs/benchmarks.md).
                    "fused": True}
        return getattr(torch.optim, name), {"lr": t.lr, **{k: settings[k] for k in keys}}

    return build


def _adafactor(t):
    from transformers.optimization import Adafactor

    return Adafactor, {"lr": t.lr, "scale_parameter": False, "relative_step": False, "warmup_init": False}


def _adamw_8bit(t):
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("train.optimizer adamw_8bit needs bitsandbytes: pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit, {"lr": t.lr, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}


OPTIMIZERS = {
    "adamw": Optimizer(_torch("AdamW", "betas", "eps", "fused"), 8),
    "adam": Optimizer(_torch("Adam", "betas", "eps", "fused"), 8),
    "sgd": Optimizer(_torch("SGD", "momentum", "nesterov"), 0),
    "adagrad": Optimizer(_torch("Adagrad"), 4),
    "adadelta": Optimizer(_torch("Adadelta"), 8),
    "rmsprop": Optimizer(_torch("RMSprop", "momentum"), 4),
    "rprop": Optimizer(_torch("Rprop"), 8),
    "adafactor": Optimizer(_adafactor, 0.5),
    "adamw_8bit": Optimizer(_adamw_8bit, 2),
}


def optimizer_cls_and_kwargs(train_cfg) -> tuple[type, dict]:
    """(optimizer class, kwargs) for train.optimizer; LoRA+ builds its own groups elsewhere."""
    return OPTIMIZERS[train_cfg.optimizer].build(train_cfg)
