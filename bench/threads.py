"""Intra-op thread count: seconds per LoRA training step of SmolLM2 at each count, one process each.

    .venv/bin/python bench/threads.py [--threads 1,2,4]

The demo's step (batch 16, rows of 49 tokens, LoRA r=8 on all linear layers, bf16 base, eager
attention, the LM head at the last position); 4 steps timed after one warm-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(threads: int) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoModelForCausalLM

    from lmtune.config import LoraMethod, ModelConfig
    from lmtune.training.prepare import apply_method
    from lmtune.model.load import resolve_model_path

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(ModelConfig()), dtype=torch.bfloat16,
                                                 attn_implementation="eager")
    model = apply_method(LoraMethod(r=8, alpha=32, dropout=0.0, target_modules="all-linear"), model, None)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (16, 49))
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, -1] = True

    def step():
        with torch.autocast("cpu", torch.bfloat16):
            logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
        logits.float().logsumexp(-1).sum().backward()

    step()
    start = time.perf_counter()
    for _ in range(4):
        step()
    print(f"| {threads} | {(time.perf_counter() - start) / 4:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one)
    print("| threads | s / step |\n| ---: | ---: |", flush=True)
    for n in map(int, args.threads.split(",")):
        subprocess.run([sys.executable, __file__, "--one", str(n)], check=True)


if __name__ == "__main__":
    main()
