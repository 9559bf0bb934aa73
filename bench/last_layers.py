"""LoRA on the top blocks only (`method.last_layers`): seconds per training step against every block adapted.

    .venv/bin/python bench/last_layers.py [--layers 30,20,15,10] [--workload classify] [--rounds 4]

Below the lowest adapted block nothing needs a gradient, so autograd records nothing there and the
backward pass ends at that block. SmolLM2 with LoRA r=16 / alpha=64 (the demo's), one model per
setting, built in this process; their steps are interleaved (bench/compile.py's step and workloads)
so that the machine's drift falls on all of them alike. Prints the median step and its ratio to the
first setting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

import compile as compile_bench  # noqa: E402


def build(layers: int, workload: str):
    import torch
    from transformers import AutoModelForCausalLM

    from lmtune.config import LoraMethod, ModelConfig
    from lmtune.model.load import resolve_model_path
    from lmtune.training.prepare import apply_method

    attention, dropout = compile_bench.WORKLOADS[workload][2:]
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(ModelConfig()), dtype=torch.bfloat16,
                                                 attn_implementation=attention)
    depth = model.config.num_hidden_layers
    options = LoraMethod(r=16, alpha=64, dropout=dropout, last_layers=None if layers >= depth else layers)
    return apply_method(options, model, None).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="30,20,15,10", help="adapted blocks per setting (30: all of SmolLM2's)")
    parser.add_argument("--workload", default="classify", choices=sorted(compile_bench.WORKLOADS))
    parser.add_argument("--rounds", type=int, default=4, help="passes over the workload's lengths, after one of warm-up")
    args = parser.parse_args()
    settings = [int(n) for n in args.layers.split(",")]
    models = {n: build(n, args.workload) for n in settings}
    lengths = compile_bench.WORKLOADS[args.workload][1]
    for model in models.values():
        for length in lengths:
            compile_bench.step(model, args.workload, length)
    times: dict[int, list[float]] = {n: [] for n in settings}
    for _ in range(args.rounds):
        for length in lengths:
            for n, model in models.items():
                times[n].append(compile_bench.step(model, args.workload, length))
    first = statistics.median(times[settings[0]])
    print(f"| adapted blocks | s / step ({args.workload}, interleaved, median) | ratio |\n| ---: | ---: | ---: |")
    for n, t in times.items():
        print(f"| {n} | {statistics.median(t):.3f} | {statistics.median(t) / first:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
