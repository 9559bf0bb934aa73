"""What each of lmtune's speed levers gives: lmtune's defaults, then each lever turned off alone.

    .venv/bin/python bench/levers.py [--workload classification|sft] [--steps 30] [--levers name,name] [key=value ...]

The run is `lmtune train` on bench/vs_reference.py's workload and settings (SmolLM2, LoRA r=8 /
alpha=32 / dropout 0.1 on q,k,v,o,gate,up,down, the same rows, batch and learning rate), cut to
--steps optimizer steps, each variant in its own process (so that peak RSS is its own); a lever named
twice runs twice, so `--levers defaults,x,defaults,x` alternates them. Five levers have no setting
because nobody should turn them off; this script turns them off in its own process: `full_logits`
runs the LM head over the whole vocabulary at every position and upcasts those logits to fp32 (what
the model's own loss does), `torch_dropout` keeps peft's nn.Dropout instead of FastDropout,
`torch_masks` draws FastDropout's and the fused LoRA layers' masks with torch's generator,
`peft_lora` keeps peft's LoRA forward, `plain_block` keeps transformers' RMSNorm and MLP forward,
`prompt_per_row` computes a batch's common prompt in every row (the workloads' LoRA dropout already
turns that lever off: pass method.dropout=0 to measure it). Overrides after the options (key=value)
go to every variant.
The table reports seconds per step, real (non-padding) tokens/s, peak RSS and each variant's speed
relative to the defaults. torch.compile and thread counts have their own scripts (bench/compile.py,
bench/threads.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from vs_reference import ROOT, WORKLOADS, lmtune_train_args, sample_rows  # noqa: E402

# name -> (what is turned off, lmtune overrides, the workloads it applies to)
LEVERS = {
    "defaults": ("nothing: lmtune's defaults", [], ("classification", "sft", "seed")),
    "fp32_base": ("bf16 base weights: fp32 weights under bf16 autocast instead", ["model.dtype=fp32"],
                  ("classification", "sft", "seed")),
    "fp32": ("bf16 altogether: fp32 weights and products", ["train.precision=fp32"], ("classification", "sft", "seed")),
    "random_batches": ("length grouping: random batches padded to their longest row", ["train.group_by_length=false"],
                       ("classification", "sft", "seed")),
    "full_logits": ("logits at target positions only: fp32 logits over the vocabulary at every position", [],
                    ("classification", "sft", "seed")),
    "torch_dropout": ("FastDropout: peft's nn.Dropout", [], ("classification", "sft", "seed")),
    "torch_masks": ("dropout masks from numpy's SFC64: from torch's generator (mt19937)", [],
                    ("classification", "sft", "seed")),
    "peft_lora": ("LoRA as one bf16 autograd node per layer: peft's LoRA forward", [], ("classification", "sft", "seed")),
    "plain_block": ("RMSNorm and SiLU(gate) * up as one node each (model/lean_block.py): transformers' modules", [],
                    ("classification", "sft", "seed")),
    "prompt_per_row": ("a batch's common prompt computed once (tasks/prompt_once.py; off with dropout): once per row", [],
                       ("classification", "sft", "seed")),
    "sdpa": ("eager attention (the classification config's choice): sdpa", ["model.attn_implementation=sdpa"],
             ("classification", "seed")),
    "chunked_attention": ("eager attention (the classification config's choice): lmtune's chunked attention",
                          ["model.attn_implementation=null"], ("classification", "seed")),
    "checkpointing": ("no gradient checkpointing: checkpointing on", ["train.gradient_checkpointing=true"],
                      ("classification", "sft")),
    "packed": ("length grouping: packed (padding-free) rows instead", ["data.packing=true"], ("sft",)),
}


def full_vocabulary_logits(model, inputs):
    """The logits a plain recipe computes: every position, the whole vocabulary, upcast to fp32."""
    from lmtune.data.tokenize import IGNORE
    from lmtune.tasks.base import MODEL_INPUTS

    kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    logits = model(**kwargs, use_cache=False).logits.float()[:, :-1]
    next_labels = inputs["labels"][:, 1:]
    keep = next_labels != IGNORE
    return logits[keep], next_labels[keep]


def one(lever: str, argv: list[str]) -> None:
    """Run lmtune in this process with one lever turned off."""
    sys.path.insert(0, str(ROOT / "src"))
    import lmtune.methods.fast_dropout
    import lmtune.methods.fused_lora
    import lmtune.methods.peft_common
    import lmtune.tasks.label_tokens
    import lmtune.tasks.prompt_once
    import lmtune.tasks.sft
    import lmtune.training.prepare
    from lmtune.cli import main

    if lever == "full_logits":
        lmtune.tasks.label_tokens.target_logits = lmtune.tasks.sft.target_logits = full_vocabulary_logits
    elif lever == "torch_dropout":
        lmtune.methods.peft_common.use_fast_dropout = lambda model: 0
    elif lever == "torch_masks":
        from dropout_masks import torch_keep_mask

        lmtune.methods.fast_dropout.random_keep_mask = lmtune.methods.fused_lora.random_keep_mask = torch_keep_mask
    elif lever == "peft_lora":
        lmtune.methods.peft_common.fused_lora = lambda model: 0
    elif lever == "plain_block":
        lmtune.training.prepare.use_lean_block = lambda model: 0
    elif lever == "prompt_per_row":
        lmtune.tasks.prompt_once.MIN_SAVED_TOKENS = 10**9
    sys.exit(main(argv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="classification", choices=sorted(WORKLOADS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.one:
        return one(args.one, rest)
    w = WORKLOADS[args.workload]
    print(f"| {args.workload}: turned off | s / step | real tokens/s | peak RSS (GB) | speed vs defaults |\n"
          "| --- | ---: | ---: | ---: | ---: |", flush=True)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        rows = sample_rows(ROOT / w["train"], w["rows"], Path(tmp) / "train.jsonl")
        for i, lever in enumerate(args.levers.split(",")):  # a lever may be named twice, to alternate
            what, overrides, workloads = LEVERS[lever]
            if args.workload not in workloads:
                continue
            out = Path(tmp) / f"{i}-{lever}"
            command = [sys.executable, __file__, "--one", lever, *lmtune_train_args(w, rows, out, args.seed),
                       f"train.max_steps={args.steps}", *overrides, *rest]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {what} | failed: {done.stderr.strip().splitlines()[-1:]} | | | |", flush=True)
                continue
            m = json.loads((out / "metrics.json").read_text())["train"]
            rate = m["tokens"] / m["runtime_s"]
            base = base or rate
            print(f"| {what} | {m['runtime_s'] / m['steps']:.2f} | {rate:,.0f} | {m['peak_memory_mb'] / 1024:.2f} | "
                  f"{rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
