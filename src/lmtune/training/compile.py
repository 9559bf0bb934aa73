"""torch.compile for training, one transformer block at a time (regional compilation).

The blocks of a model are copies of one another, so compiling each block in place compiles one
graph that all of them reuse: about a minute on a 2-core CPU, where compiling the whole model took
nine and ran slower (bench/compile.py, docs/benchmarks.md). In place (`Module.compile`) keeps the
parameter names, so checkpoints, adapters and merges see the model they would see without it.

Inductor keeps what it compiled in an on-disk cache; lmtune puts it in its own cache directory
(~/.cache/lmtune/inductor, unless TORCHINDUCTOR_CACHE_DIR says otherwise) rather than inductor's
default under /tmp, so that the compile minute is paid once per machine and set of shapes, not
again after the temporary directory is cleared. LoRA layers run inside the compiled blocks as one
operator each (methods/fused_lora.py), so their dropout masks do not break the block's graph.
"""

from __future__ import annotations

import os

from lmtune.errors import ConfigError
from lmtune.model.blocks import named_blocks
from lmtune.model.builtin import cache_root


def compile_blocks(model) -> int:
    """Compile every transformer block of `model` in place; returns how many."""
    try:
        blocks = named_blocks(model)[1]
    except LookupError as e:
        raise ConfigError(f"train.compile: no transformer blocks found in {e}; set train.compile=false") from None
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    for block in blocks:
        block.compile()
    return len(blocks)
