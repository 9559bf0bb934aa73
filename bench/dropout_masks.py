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


def torch_keep_mask(shape: torch.Size, keep: float, device="cpu") -> torch.Tensor:
    """FastDropout's mask as it was drawn before SFC64: four 16-bit lanes of each torch int64 draw
    (bench/levers.py's `torch_masks` lever puts it back in a training run)."""
    count = shape.numel()
    bits = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    return bits.view(torch.int16)[:count].view(shape) < threshold(keep)


def threshold(keep: float) -> int:
    return round(keep * 65536) - 32768


def torch_in_two_halves(shape: torch.Size, keep: float) -> torch.Tensor:
    """The same draw, its two halves from two torch generators on two threads."""
    gens = [torch.Generator().manual_seed(int(s)) for s in torch.randint(2**62, (2,))]
    words = (shape.numel() + 3) // 4
    half = words // 2
    bits = torch.empty(words, dtype=torch.int64)
    later = POOL.submit(lambda: bits[half:].random_(-(2**63), 2**63 - 1, generator=gens[1]))
    bits[:half].random_(-(2**63), 2**63 - 1, generator=gens[0])
    later.result()
    return bits.view(torch.int16)[:shape.numel()].view(shape) < threshold(keep)


def numpy_mask(kind: str, parts: int):
    """The mask from numpy's bit generator `kind`, drawn whole or in two halves on two threads."""
    def draw(shape: torch.Size, keep: float) -> torch.Tensor:
        seeds = [int(s) for s in torch.randint(2**62, (parts,))]
        gens = [np.random.Philox(key=s) if kind == "Philox" else getattr(np.random, kind)(s) for s in seeds]
        count = shape.numel()
        words = (count + 3) // 4
        if parts == 1:
            return torch.from_numpy(gens[0].random_raw(words).view(np.int16)[:count]).view(shape) < threshold(keep)
        mask = torch.empty(4 * words, dtype=torch.bool)
        half = 4 * (words // 2)
        later = POOL.submit(gens[1].random_raw, words - words // 2)
        torch.lt(torch.from_numpy(gens[0].random_raw(words // 2).view(np.int16)), threshold(keep), out=mask[:half])
        torch.lt(torch.from_numpy(later.result().view(np.int16)), threshold(keep), out=mask[half:])
        return mask[:count].view(shape)
    return draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    variants = {"torch mt19937": torch_keep_mask, "torch mt19937, 2 threads": torch_in_two_halves}
    for kind in ("SFC64", "PCG64", "Philox"):
        variants[f"numpy {kind}"] = numpy_mask(kind, 1)
        variants[f"numpy {kind}, 2 threads"] = numpy_mask(kind, 2)
    print("| generator | " + " | ".join(f"{k} ({r} x {c})" for k, (r, c) in SHAPES.items()) + " |")
    print("| --- |" + " ---: |" * len(SHAPES))
    for name, draw in variants.items():
        cells = []
        for shape in SHAPES.values():
            draw(torch.Size(shape), 0.9)
            start = time.perf_counter()
            for _ in range(args.repeats):
                draw(torch.Size(shape), 0.9)
            cells.append(f"{1000 * (time.perf_counter() - start) / args.repeats:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
