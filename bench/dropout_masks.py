"""LoRA dropout's keep masks on a CPU: torch's generator (one thread, mt19937) against numpy's bit
generators, on one thread and split over two. Each variant draws 16 random bits an element, as
methods/fast_dropout.py does, at the shapes of a LoRA layer's input in lmtune's workloads.

    .venv/bin/python bench/dropout_masks.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

SHAPES = {"seed, 8 x 25 tokens": (200, 576), "classification, 16 x 50": (800, 576),
          "SFT, 8 x 210": (1680, 576), "SFT down_proj, 8 x 210": (1680, 1536)}
POOL = ThreadPoolExecutor(max_workers=1)


def torch_bits(words: int, parts: int) -> list[torch.Tensor]:
    if parts == 1:
        return [torch.empty(words, dtype=torch.int64).random_(-(2**63), 2**63 - 1)]
    gens = [torch.Generator().manual_seed(int(s)) for s in torch.randint(2**62, (parts,))]
    half = words // 2
    out = torch.empty(words, dtype=torch.int64)
    later = POOL.submit(lambda: out[half:].random_(-(2**63), 2**63 - 1, generator=gens[1]))
    out[:half].random_(-(2**63), 2**63 - 1, generator=gens[0])
    later.result()
    return [out]


def numpy_bits(kind):
    def draw(words: int, parts: int) -> list[torch.Tensor]:
        seeds = [int(s) for s in torch.randint(2**62, (parts,))]
        if kind == "Philox":
            gens = [np.random.Philox(key=s) for s in seeds]
        else:
            gens = [getattr(np.random, kind)(s) for s in seeds]
        if parts == 1:
            return [torch.from_numpy(gens[0].random_raw(words).view(np.int64))]
        half = words // 2
        later = POOL.submit(gens[1].random_raw, words - half)
        first = gens[0].random_raw(half)
        return [torch.from_numpy(first.view(np.int64)), torch.from_numpy(later.result().view(np.int64))]
    return draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    variants = {"torch mt19937": (torch_bits, 1), "torch mt19937, 2 threads": (torch_bits, 2)}
    for kind in ("SFC64", "PCG64", "Philox"):
        variants[f"numpy {kind}"] = (numpy_bits(kind), 1)
        variants[f"numpy {kind}, 2 threads"] = (numpy_bits(kind), 2)
    print("| generator | " + " | ".join(f"{k} ({r} x {c})" for k, (r, c) in SHAPES.items()) + " |")
    print("| --- |" + " ---: |" * len(SHAPES))
    for name, (draw, parts) in variants.items():
        cells = []
        for rows, cols in SHAPES.values():
            count = rows * cols
            words = (count + 3) // 4

            def once():
                return [b.view(torch.int16) < 26214 for b in draw(words, parts)]

            once()
            start = time.perf_counter()
            for _ in range(args.repeats):
                once()
            cells.append(f"{1000 * (time.perf_counter() - start) / args.repeats:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
