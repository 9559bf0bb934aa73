"""torch.compile for training, one transformer block at a time (regional compilation).

The blocks of a model are copies of one another, so compiling each block in place compiles one
graph that all of them reuse: about a minute on a 2-core CPU, where compiling the whole model took
nine and ran slower (bench/compile.py, docs/benchmarks.md). In place (`Module.compile`) keeps the
parameter names, so checkpoints, adapters and merges see the model they would see without it.
"""

from __future__ import annotations

from lmtune.errors import ConfigError


def compile_blocks(model) -> int:
    """Compile every transformer block of `model` in place; returns how many."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers names its repeated block classes here (LlamaDecoderLayer, GPT2Block, BertLayer ...).
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in kinds]
    if not blocks:
        raise ConfigError(f"train.compile: no transformer blocks found in {type(base).__name__} "
                          "(it names none in _no_split_modules); set train.compile=false")
    for block in blocks:
        block.compile()
    return len(blocks)
