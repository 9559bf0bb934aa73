"""The least time a LoRA training step of SmolLM2 can take on this CPU: its unavoidable work, timed.

    .venv/bin/python bench/step_floor.py [--tokens 200] [--r 8] [--dropout 0.1] [--reference-step 1.256]

A step of LoRA on all seven linear layers of the 30 blocks must, whatever the framework does around
it, run the frozen base's product forward (x W^T) and backward (g W, the gradient at the input; no
weight gradient), LoRA's six thin products per layer (x A^T, h B^T forward; g^T h, g B, gh^T x, gh A
backward) and, with dropout, draw a mask per layer input. This times each of them alone at the
step's shapes (bf16, `--tokens` rows: 8 rows of ~25 real tokens for the seed article's recipe) and
adds them up over the blocks. Attention, norms, rotary, SiLU, residuals and the LM head are left out,
so the sum is a lower bound. Printed beside it: the step time that `--reference-step` / 4 allows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, INTERMEDIATE, KV, BLOCKS = 576, 1536, 192, 30  # SmolLM2-135M: 9 query heads, 3 key/value heads of 64
LAYERS = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV), "v_proj": (HIDDEN, KV), "o_proj": (HIDDEN, HIDDEN),
          "gate_proj": (HIDDEN, INTERMEDIATE), "up_proj": (HIDDEN, INTERMEDIATE), "down_proj": (INTERMEDIATE, HIDDEN)}


def seconds(fn, reps: int = 200) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def layer_costs(rows: int, n_in: int, n_out: int, r: int, dropout: float) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "src"))
    from lmtune.methods.fast_dropout import random_keep_mask

    bf16 = torch.bfloat16
    x, g = torch.randn(rows, n_in, dtype=bf16), torch.randn(rows, n_out, dtype=bf16)
    w, a, b = torch.randn(n_out, n_in, dtype=bf16), torch.randn(r, n_in, dtype=bf16), torch.randn(n_out, r, dtype=bf16)
    h, gh, y = torch.randn(rows, r, dtype=bf16), torch.randn(rows, r, dtype=bf16), torch.randn(rows, n_out, dtype=bf16)
    thin = [lambda: x @ a.t(), lambda: y.addmm_(h, b.t()), lambda: g.t() @ h, lambda: g @ b,
            lambda: gh.t() @ x, lambda: gh @ a]
    return {
        "base forward": seconds(lambda: x @ w.t()),
        "base backward (input gradient)": seconds(lambda: g @ w),
        "LoRA's six thin products": sum(seconds(f) for f in thin),
        "dropout mask": seconds(lambda: random_keep_mask(x.shape, 1 - dropout)) if dropout > 0 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200, help="rows of a step (batch x real tokens)")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--reference-step", type=float, default=1.256,
                        help="the reference recipe's seconds per step (seed workload: 314 s / 250 steps)")
    args = parser.parse_args()
    totals: dict[str, float] = {}
    for n_in, n_out in LAYERS.values():
        for part, s in layer_costs(args.tokens, n_in, n_out, args.r, args.dropout).items():
            totals[part] = totals.get(part, 0.0) + s * BLOCKS
    floor = sum(totals.values())
    print(f"{args.tokens} tokens a step, LoRA r={args.r}, dropout {args.dropout}, {torch.get_num_threads()} threads, bf16\n")
    print("| work of one step (30 blocks x 7 layers) | ms |\n| --- | ---: |")
    for part, s in totals.items():
        print(f"| {part} | {s * 1e3:.0f} |")
    print(f"| **sum (a lower bound: attention, norms, SiLU, residuals, LM head left out)** | **{floor * 1e3:.0f}** |")
    print(f"| 4x the reference's {args.reference_step:.3f} s step | {args.reference_step / 4 * 1e3:.0f} |")


if __name__ == "__main__":
    main()
