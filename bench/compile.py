"""torch.compile on CPU: seconds per LoRA training step of SmolLM2, eager vs compiled, one process each.

    .venv/bin/python bench/compile.py [--variants eager,blocks,whole] [--workload classify|sft|seed] [--alternate]

`blocks` compiles each decoder block (regional compilation: the 30 blocks share one compiled graph),
`whole` the whole model. The step is the training step lmtune runs: bf16 base weights, LoRA r=8 on
all linear layers (fp32 weights, bf16 products: methods/fused_lora.py) under bf16 autocast, the LM head at the target positions only, the attention each workload uses in lmtune. The rows
change length from batch to batch as in training (length-grouped batches), so the compiled variants
pay for recompiling or for dynamic shapes; the table shows the first pass over the lengths
(compilation included) and the steady time per step after it. Inductor's on-disk cache is off
(TORCHINDUCTOR_FORCE_DISABLE_CACHES=1) unless --warm: the first pass then shows what a first run
pays; a later run on the same machine finds the compiled kernels in the cache. --alternate builds
the variants in one process and interleaves their steps, for step times that process-to-process
drift does not blur (the compile times are then not shown).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (batch, lengths of successive batches, attention, LoRA dropout) as in bench/vs_reference.py's
# workloads: rotten-tomatoes reviews with the demo's prompt, GSM8K question + worked answer, and the
# seed article's recipe (the last 32 tokens of a review, dropout 0.1).
WORKLOADS = {"classify": (16, [49, 41, 57, 45], "eager", 0.0), "sft": (8, [190, 240, 290, 220], "sdpa", 0.0),
             "seed": (8, [32, 27, 32, 22], "eager", 0.1)}


def build(variant: str, workload: str):
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoModelForCausalLM

    from lmtune.config import LoraMethod, ModelConfig
    from lmtune.training.compile import compile_blocks
    from lmtune.training.prepare import apply_method
    from lmtune.model.load import resolve_model_path

    batch, lengths, attention, dropout = WORKLOADS[workload]
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(ModelConfig()), dtype=torch.bfloat16,
                                                 attn_implementation=attention)
    model = apply_method(LoraMethod(r=8, alpha=32, dropout=dropout, target_modules="all-linear"), model, None)
    model.train()
    if variant == "blocks":
        compile_blocks(model)  # what train.compile does, inductor's cache directory included
    elif variant == "whole":
        model = torch.compile(model)
    return model


def step(model, workload: str, length: int) -> float:
    import torch

    batch = WORKLOADS[workload][0]
    ids = torch.randint(0, 49152, (batch, length))
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, length // 2:] = workload == "sft"  # SFT: loss on the answer (half the row)
    keep[:, -1] = True
    start = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16):
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
    logits.float().logsumexp(-1).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def one(variant: str, workload: str, rounds: int) -> None:
    import torch

    model = build(variant, workload)
    torch.manual_seed(0)
    lengths = WORKLOADS[workload][1]
    first = sum(step(model, workload, n) for n in lengths)
    steady = [step(model, workload, n) for _ in range(rounds) for n in lengths]
    print(f"| {workload} | {variant} | {first:.1f} | {sum(steady) / len(steady):.2f} |", flush=True)


def alternate(variants: list[str], workload: str, rounds: int) -> None:
    """Every variant in this process, their steps interleaved: the machine's drift between
    processes (about 10% here) falls on all of them alike. Two passes over the lengths warm up."""
    models = {v: build(v, workload) for v in variants}
    lengths = WORKLOADS[workload][1]
    for model in models.values():
        for n in lengths * 2:
            step(model, workload, n)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for n in lengths:
            for v, model in models.items():
                times[v].append(step(model, workload, n))
    print("| workload | variant | s / step (interleaved) |\n| --- | --- | ---: |")
    for v, t in times.items():
        print(f"| {workload} | {v} | {sum(t) / len(t):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="eager,blocks,whole")
    parser.add_argument("--workload", default="classify", choices=sorted(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=2, help="passes over the lengths after the first")
    parser.add_argument("--warm", action="store_true", help="keep inductor's on-disk cache of compiled kernels")
    parser.add_argument("--alternate", action="store_true",
                        help="one process, the variants' steps interleaved (after compiling): steadier step times")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.alternate:
        return alternate(args.variants.split(","), args.workload, args.rounds)
    if args.one:
        return one(args.one, args.workload, args.rounds)
    print("| workload | variant | first pass, s (compile included) | s / step after |\n| --- | --- | ---: | ---: |",
          flush=True)
    for variant in args.variants.split(","):
        env = dict(os.environ, **({} if args.warm else {"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}))
        subprocess.run([sys.executable, __file__, "--one", variant, "--workload", args.workload,
                        "--rounds", str(args.rounds)], check=False, env=env)


if __name__ == "__main__":
    main()
