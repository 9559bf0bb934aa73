"""torch.compile for training, one transformer block at a time (regional compilation).

The blocks of a model are copies of one another, so compiling each block in place compiles one
graph that all of them reuse: about a minute on a 2-core CPU, where compiling the whole model took
nine and ran slower (bench/compile.py, docs/benchmarks.md). In place (`Module.compile`) keeps the
parameter names, so checkpoints, adapters and merges see the model they would see without it.
"""

from __future__ import annotations

from lmtune.errors import ConfigError
from lmtune.model.blocks import named_blocks


def compile_blocks(model) -> int:
    """Compile every transformer block of `model` in place; returns how many."""
    try:
        blocks = named_blocks(model)[1]
    except LookupError as e:
        raise ConfigError(f"train.compile: no transformer blocks found in {e}; set train.compile=false") from None
    for block in blocks:
        block.compile()
    return len(blocks)
