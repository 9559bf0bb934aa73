"""The loss over the vocabulary at SFT's target rows, forward + backward from the LM head's bf16
logits: F.cross_entropy on an fp32 copy (what lmtune did, and what the model's own loss does)
against lmtune's token_cross_entropy (tasks/token_cross_entropy.py), upcasting a few rows at a time.

    .venv/bin/python bench/cross_entropy.py [--rows 850] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lmtune.tasks.token_cross_entropy import token_cross_entropy

VOCAB = 49152  # SmolLM2's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=850)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    logits = (torch.randn(args.rows, VOCAB) * 3).to(torch.bfloat16)
    targets = torch.randint(0, VOCAB, (args.rows,))
    variants = {"F.cross_entropy(logits.float())": lambda x: F.cross_entropy(x.float(), targets, reduction="sum"),
                "token_cross_entropy(logits)": lambda x: token_cross_entropy(x, targets).sum()}
    grads = []
    print("| loss, forward + backward | ms |\n| --- | ---: |")
    for name, fn in variants.items():
        def once():
            x = logits.clone().requires_grad_()
            fn(x).backward()
            return x.grad
        grads.append(once())
        once()
        start = time.perf_counter()
        for _ in range(args.repeats):
            once()
        print(f"| {name} | {1000 * (time.perf_counter() - start) / args.repeats:.1f} |", flush=True)
    print(f"\nlargest gradient difference: {(grads[0].float() - grads[1].float()).abs().max().item():.1e} "
          f"(largest gradient {grads[0].float().abs().max().item():.2f})")


if __name__ == "__main__":
    main()
