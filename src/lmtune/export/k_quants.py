"""K-quants (q4_k_m ...) through llama.cpp's own quantizer: lmtune writes an f16 file, llama.cpp
requantizes it. The gguf package has no K-quant writer, and these formats are llama.cpp's to define.

llama.cpp is reached through llama-cpp-python's binding of its quantize function when that package
is installed (the Makefile builds it for the tests), else through `llama-quantize` on PATH; without
either the error says what to run. llama.cpp keeps the metadata (tokenizer, chat template, stop
tokens) and, for a matrix whose rows do not split into its 256-value blocks, falls back to another
type by itself.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

from lmtune.errors import ConfigError, LmtuneError

K_QUANTS = {"q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q3_k_m": "Q3_K_M", "q3_k_l": "Q3_K_L", "q4_k_s": "Q4_K_S",
            "q4_k_m": "Q4_K_M", "q5_k_s": "Q5_K_S", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}


def check_quantizer(quant: str, out: Path) -> None:
    """Before anything is written: a way to run llama.cpp's quantizer, or the commands that do it."""
    if importlib.util.find_spec("llama_cpp") is None and shutil.which("llama-quantize") is None:
        raise ConfigError(f"--quant {quant} is llama.cpp's own format and needs its quantizer (pip install llama-cpp-python, "
                          f"or llama-quantize on PATH). Or export --quant f16 and run: llama-quantize "
                          f"{out}/MODEL.f16.gguf MODEL.{quant}.gguf {K_QUANTS[quant]}")


def k_quantize(source: Path, target: Path, quant: str, threads: int = 0) -> None:
    """llama.cpp requantizes `source` (f16) into `target`."""
    if importlib.util.find_spec("llama_cpp") is not None:
        import ctypes

        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{K_QUANTS[quant]}")
        params.nthread = threads
        if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise LmtuneError(f"llama.cpp could not quantize {source.name} to {quant}")
        return
    done = subprocess.run(["llama-quantize", str(source), str(target), K_QUANTS[quant]], capture_output=True, text=True)
    if done.returncode != 0:
        raise LmtuneError(f"llama-quantize failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
