"""torch.compile for training, one transformer block at a time (regional compilation).

The blocks of a model are copies of one another, so compiling each block in place compiles one
graph that all of them reuse: about a minute on a 2-core CPU, where compiling the whole model took
nine and ran slower (bench/compile.py, docs/benchmarks.md). In place (`Module.compile`) keeps the
parameter names, so checkpoints, adapters and merges see the model they would see without it.

Inductor keeps what it compiled in an on-disk cache; lmtune puts it in its own cache directory
(~/.cache/lmtune/inductor/<operator version>, unless TORCHINDUCTOR_CACHE_DIR names another) rather
than inductor's default under /tmp, so that the compile minute is paid once per machine and set of
shapes, not again after the temporary directory is cleared. LoRA layers run inside the compiled
blocks as one operator each (methods/fused_lora.py), so their dropout masks do not break the
block's graph. The cache finds a compiled block by the graph that calls that operator, not by the
operator's code; a changed operator read a stale entry (and failed) until the directory was keyed on
the operator's source.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lmtune.errors import ConfigError
from lmtune.model.blocks import named_blocks
from lmtune.model.builtin import cache_root


def compile_blocks(model) -> int:
    """Compile every transformer block of `model` in place; returns how many."""
    try:
        blocks = named_blocks(model)[1]
    except LookupError as e:
        raise ConfigError(f"train.compile: no transformer blocks found in {e}; set train.compile=false") from None
    use_lmtune_inductor_cache()
    for block in blocks:
        block.compile()
    return len(blocks)


def inductor_cache_dir() -> Path:
    """lmtune's directory for inductor's compiled kernels, one per version of the LoRA operator."""
    from lmtune.methods import fused_lora

    return cache_root() / "inductor" / hashlib.sha256(Path(fused_lora.__file__).read_bytes()).hexdigest()[:12]


def use_lmtune_inductor_cache() -> None:
    """Point inductor at inductor_cache_dir(), unless the user chose a directory: torch writes its
    /tmp default into TORCHINDUCTOR_CACHE_DIR the first time it is asked (registering lmtune's
    operator asks), so that value counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())
