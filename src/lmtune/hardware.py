"""What the machine can do: device, native bf16, memory use."""

from __future__ import annotations

import platform
import resource
from functools import lru_cache

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matrix products natively (AVX512-BF16 / AMX / Arm BF16).

    Without it torch emulates bf16 and it is slower than fp32, so "auto" precision must not pick it.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return platform.machine() == "arm64"  # Apple silicon has bf16
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", " bf16"))


def auto_precision() -> str:
    """bf16 where the hardware has it; fp16 on an older GPU; fp32 otherwise."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def peak_memory_mb() -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
