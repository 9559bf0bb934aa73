"""Attention forward + backward for one SmolLM2 block (9 query heads, 3 key/value heads, 64 dims,
bf16): torch's sdpa (its CPU flash kernel), transformers' eager attention and lmtune's chunked
attention, at the batch shapes of the benchmarks, causal.

    .venv/bin/python bench/attention.py [--shapes 8x32,16x64,16x128,8x256,8x512] [--repeats 5]

Prints ms per call (forward and backward) and, for each, the largest difference from float64 sdpa,
relative to the largest value, over the output and the three gradients.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lmtune.model.chunked_attention import ChunkedAttention

HEADS, KV_HEADS, DIM = 9, 3, 64


def eager(q, k, v, keep):
    """transformers' eager_attention_forward for these shapes."""
    k, v = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
    scores = (q @ k.transpose(2, 3)) * DIM ** -0.5
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype) @ v


def variants(keep):
    return {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "eager": lambda q, k, v: eager(q, k, v, keep),
        "chunked": lambda q, k, v: ChunkedAttention.apply(q, k, v, ~keep[None], DIM ** -0.5),
    }


def forward_backward(fn, q, k, v, grad):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad)
    return out, q.grad, k.grad, v.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8x32,16x64,16x128,8x256,8x512")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| batch x tokens | " + " | ".join(f"{n} ms" for n in variants(None)) + " | largest relative error (sdpa, eager, chunked) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for shape in args.shapes.split(","):
        batch, length = map(int, shape.split("x"))
        torch.manual_seed(0)
        q = torch.randn(batch, HEADS, length, DIM, dtype=torch.bfloat16)
        k, v = (torch.randn(batch, KV_HEADS, length, DIM, dtype=torch.bfloat16) for _ in range(2))
        grad = torch.randn_like(q)
        keep = torch.ones(length, length, dtype=torch.bool).tril()
        exact = forward_backward(lambda *t: F.scaled_dot_product_attention(*(x.double() for x in t), is_causal=True,
                                                                           enable_gqa=True), q, k, v, grad.double())
        times, errors = [], []
        for fn in variants(keep).values():
            got = forward_backward(fn, q, k, v, grad)
            errors.append(max(((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(got, exact)))
            for _ in range(2):
                forward_backward(fn, q, k, v, grad)
            start = time.perf_counter()
            for _ in range(args.repeats):
                forward_backward(fn, q, k, v, grad)
            times.append(1000 * (time.perf_counter() - start) / args.repeats)
        print(f"| {shape} | " + " | ".join(f"{t:.1f}" for t in times) + " | " + ", ".join(f"{e:.1e}" for e in errors) + " |",
              flush=True)


if __name__ == "__main__":
    main()
