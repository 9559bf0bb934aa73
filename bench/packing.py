"""Tokens/s with and without packing, on the Alpaca demo data with SmolLM2 (LoRA), in one run.

    .venv/bin/python bench/packing.py [--steps 12] [--batch-size 8] [--max-length 512] [--config configs/gsm8k_sft_lora.yaml]

Each variant runs the real `lmtune train` path (Trainer, LoRA r=16 on all linear layers, bf16
where the CPU has it) for the same number of steps on the same rows, and reports real
(non-padding) tokens per second. `--config`: another SFT config's data (its first steps x batch rows). Results and the command go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lmtune.loading as loading_module
from lmtune.config import load_config
from lmtune.model.packed_attention import use_packed_attention
from lmtune.training.run import train

ROOT = Path(__file__).resolve().parents[1]

# name -> (overrides, whether packed rows attend example by example (packed_sdpa) or, as
# transformers' sdpa does, as one long row under a block-diagonal mask)
VARIANTS = {
    "padded, random order": (["data.packing=false", "train.group_by_length=false"], True),
    "padded, grouped by length": (["data.packing=false", "train.group_by_length=true"], True),
    "packed, one masked row (transformers' sdpa)": (["data.packing=true"], False),
    "packed, example by example (lmtune's packed_sdpa)": (["data.packing=true"], True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--config", help="take the data section from this config instead of alpaca_en_demo")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="which of them, separated by semicolons")
    args = parser.parse_args()
    data = ["data.validation=null"] if args.config else [
        f"data.train={ROOT / 'examples/data/alpaca_en_demo/alpaca_en_demo.json'}", "data.format=instruction"]
    common = [
        "model.name=smollm2-135m-instruct", "method.name=lora", "method.r=16", "method.alpha=32", "method.dropout=0", *data,
        f"data.max_length={args.max_length}", f"data.max_samples={args.steps * args.batch_size}",
        "task.name=sft", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        "train.zero_shot_eval=false", "train.logging_steps=1000",
    ]
    rows = []
    for name in args.variants.split(";"):
        overrides, by_example = VARIANTS[name]
        loading_module.use_packed_attention = use_packed_attention if by_example else (lambda model: False)
        with tempfile.TemporaryDirectory() as out:
            t = train(load_config(args.config, common + overrides + [f"output.dir={out}/run"])).metrics["train"]
        rows.append((name, t["tokens"], t["runtime_s"], t["tokens_per_s"]))
    base = rows[0][3]
    print(f"\nSmolLM2-135M LoRA SFT, {args.config or 'alpaca_en_demo'}, {args.steps} steps x {args.batch_size} rows, max_length {args.max_length}")
    print(f"| batching | real tokens | train time (s) | real tokens/s | vs {rows[0][0]} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, tokens, runtime, tps in rows:
        print(f"| {name} | {tokens:,} | {runtime:.1f} | {tps:,.0f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
