"""What autograd keeps for the backward pass of one training forward, by the node that keeps it.

    .venv/bin/python bench/kept_for_backward.py [--config CONFIG] [--batch 2] [--length 512] [key=value ...]

Builds the model as `lmtune train` does (configs/gsm8k_sft_lora.yaml by default: SmolLM2, LoRA with
dropout), runs the task's forward on random token ids with the first half of each row masked out of
the loss, under bf16 autocast, then walks the autograd graph and sums the bytes of every distinct
tensor storage each node keeps (frozen weights left out: they are there anyway). Prints the total,
bytes per token per transformer block, and the largest entries: where activation memory goes.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def kept_tensors(node) -> list[torch.Tensor]:
    tensors = []
    for name in dir(node):
        if name.startswith("_saved_"):  # built-in nodes expose what they keep as _saved_* attributes
            try:
                value = getattr(node, name)
            except RuntimeError:
                continue
            values = value if isinstance(value, (tuple, list)) else [value]
            tensors += [(name[7:], t) for t in values if isinstance(t, torch.Tensor)]
    if hasattr(node, "saved_tensors"):  # custom autograd Functions
        tensors += [("ctx", t) for t in node.saved_tensors]
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/gsm8k_sft_lora.yaml"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--top", type=int, default=20)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, str(ROOT / "src"))
    from lmtune.config import load_config
    from lmtune.loading import load_for_training
    from lmtune.model.blocks import transformer_blocks
    from lmtune.tasks.base import target_logits
    from lmtune.training.prepare import apply_method

    cfg = load_config(args.config, overrides)
    loaded = load_for_training(cfg)
    model = apply_method(cfg.method, loaded.model, loaded.tokenizer, loaded.task).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(100, len(loaded.tokenizer) - 1, (args.batch, args.length))
    labels = ids.clone()
    labels[:, : args.length // 2] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=loaded.precision != "fp32"):
        logits, targets = target_logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
        loss = torch.nn.functional.cross_entropy(logits, targets)
    seen, nbytes, count = set(weights), collections.Counter(), collections.Counter()
    todo, visited = [loss.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for name, t in kept_tensors(node):
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            key = f"{type(node).__name__}.{name} {str(t.dtype)[6:]} {tuple(t.shape)}"
            nbytes[key] += storage.nbytes()
            count[key] += 1
        todo += [f for f, _ in node.next_functions]
    per = args.batch * args.length * len(transformer_blocks(model, "bench"))
    total = sum(nbytes.values())
    print(f"{args.batch} x {args.length} tokens: {total / 1e6:.0f} MB kept for backward, "
          f"{total / per:,.0f} bytes per token per block\n")
    print("| MB | tensors | bytes / token / block | node . what (dtype, shape) |\n| ---: | ---: | ---: | --- |")
    for key, size in nbytes.most_common(args.top):
        print(f"| {size / 1e6:.1f} | {count[key]} | {size / per:,.0f} | {key} |")


if __name__ == "__main__":
    main()
