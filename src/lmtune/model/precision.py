"""The run-level precision policy: which precision a run computes in, and which dtype its weights
are held in. Training, evaluation, serving, the planner and the reference model all ask here."""

from __future__ import annotations

import contextlib

import torch

from lmtune import hardware
from lmtune.errors import ConfigError


def resolve_precision(requested: str) -> str:
    precision = hardware.auto_precision() if requested == "auto" else requested
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return precision


def weights_dtype(requested: str, precision: str, base_frozen: bool) -> torch.dtype:
    """Frozen base weights are held in the 16-bit compute dtype (half the memory, no casts per
    step); trained weights stay fp32 so that small updates are not rounded away."""
    if requested != "auto":
        return hardware.DTYPES[requested]
    return hardware.DTYPES[precision] if base_frozen and precision != "fp32" else torch.float32


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast, as the Trainer uses during training; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=hardware.DTYPES[precision])


def model_device(model) -> torch.device:
    return next(model.parameters()).device
