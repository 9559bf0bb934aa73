"""Optimizers by name: the class and keyword arguments the Trainer builds its optimizer from
(the Trainer keeps making the parameter groups: no weight decay on biases and norms)."""

from __future__ import annotations

import torch

from lmtune.config import Config
from lmtune.errors import ConfigError


def optimizer_cls_and_kwargs(cfg: Config):
    """(optimizer class, kwargs) for train.optimizer; LoRA+ builds its own groups elsewhere."""
    t = cfg.train
    name = t.optimizer
    if name == "adamw":
        return torch.optim.AdamW, {"lr": t.lr, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    if name == "adam":
        return torch.optim.Adam, {"lr": t.lr, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    if name == "sgd":
        return torch.optim.SGD, {"lr": t.lr, "momentum": t.momentum, "nesterov": t.nesterov}
    if name == "adagrad":
        return torch.optim.Adagrad, {"lr": t.lr}
    if name == "adadelta":
        return torch.optim.Adadelta, {"lr": t.lr}
    if name == "rmsprop":
        return torch.optim.RMSprop, {"lr": t.lr, "momentum": t.momentum}
    if name == "rprop":
        return torch.optim.Rprop, {"lr": t.lr}
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor, {"lr": t.lr, "scale_parameter": False, "relative_step": False, "warmup_init": False}
    if name == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("train.optimizer adamw_8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit, {"lr": t.lr, "betas": (t.adam_beta1, t.adam_beta2), "eps": t.adam_epsilon}
    raise ConfigError(f"train.optimizer: unknown optimizer {name!r}")
