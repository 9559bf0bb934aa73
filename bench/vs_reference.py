"""lmtune against the plain transformers + peft recipe, side by side on the same machine and data.

    .venv/bin/python bench/vs_reference.py [--workloads classification,sft] [--seed N] [--lmtune key=value ...]
                                           [--variants "" "train.compile=true" ...]

Workloads: classification (rotten tomatoes, chat template, 128 tokens), sft (GSM8K, 512) and seed (the
seed article's own format token for token: review + EOS + label word, the last 32 tokens, batch 8;
the script checks that both sides train the same ids). For each workload, one after the other, each
in its own process (so that peak RSS is its own):
1. bench/reference_recipe.py: Trainer + peft LoRA r=8 / alpha=32 / dropout 0.1 on q,k,v,o,gate,up,down,
   every example padded to the fixed max length, DataCollatorWithPadding, bf16 autocast;
2. `lmtune train` with the same model, LoRA settings, training rows, batch size, learning rate,
   schedule and epochs (lmtune's own defaults otherwise: bf16 base weights, length grouping,
   logits only at target positions ...; `--lmtune` adds overrides, to measure a lever; `--variants`
   runs lmtune once per variant, each a space-separated list of further overrides, "" for none).
Both trained adapters are then scored by the same code (`lmtune eval --data`). The table reports
real (non-padding) tokens/s, samples/s, training time, peak RSS and the validation metric, and the
share of the machine's bf16 matrix-multiply rate (measured here) that the training reaches.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LORA_TARGETS = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"
SYSTEM = "Is this movie review positive or negative?"

WORKLOADS = {
    "classification": dict(config="configs/sentiment_lora.yaml", train="examples/data/rotten_tomatoes/train.jsonl",
                           validation="examples/data/rotten_tomatoes/validation.jsonl", rows=2000, eval_rows=None,
                           max_length=128, batch_size=16, lr=3e-4, metric="accuracy"),
    # The seed article's recipe token for token (../shared/seeds/003): review + EOS + label word, the
    # last 32 tokens kept, batch 8, no warmup; lmtune reads the same ids through data.template=eos_separated.
    "seed": dict(config="configs/sentiment_lora.yaml", train="examples/data/rotten_tomatoes/train.jsonl",
                 validation="examples/data/rotten_tomatoes/validation.jsonl", rows=2000, eval_rows=None,
                 max_length=32, batch_size=8, lr=2e-4, warmup=0.0, labels="neg,pos", system=None, metric="accuracy",
                 lmtune=["data.template=eos_separated", "data.system_prompt=", "task.label_words=[neg, pos]"]),
    "sft": dict(config="configs/gsm8k_sft_lora.yaml", train="examples/data/gsm8k/train.jsonl",
                validation="examples/data/gsm8k/test.jsonl", rows=500, eval_rows=200,
                max_length=512, batch_size=8, lr=2e-4, metric="loss"),
}


def gemm_rate_gflops(seconds: float = 3.0) -> float:
    """bf16 matrix-multiply rate on shapes like the model's MLP (2048 tokens x 576 -> 1536)."""
    a, b = torch.randn(2048, 576, dtype=torch.bfloat16), torch.randn(576, 1536, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 2048 * 576 * 1536 * count / (time.perf_counter() - start) / 1e9


def model_sizes(model_dir: str) -> tuple[int, int]:
    """(parameters in the transformer blocks, parameters of the LM head), from the config alone."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    body = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    head = model.get_output_embeddings().weight.numel()
    return body, head


def sample_rows(path: Path, n: int | None, out: Path) -> Path:
    lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    chosen = lines if n is None or n >= len(lines) else random.Random(0).sample(lines, n)
    out.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return out


def run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")


def evaluate(run_dir: Path, data: Path) -> dict:
    report = run_dir / "eval.json"
    run([sys.executable, "-m", "lmtune", "eval", str(run_dir), "--data", str(data), "--output", str(report),
         "--max-generations", "0"])
    return json.loads(report.read_text())


def lmtune_train_args(w: dict, rows: Path, out: Path, seed: int) -> list[str]:
    """`lmtune train` with the reference recipe's model, LoRA settings, rows and hyper-parameters."""
    return ["train", w["config"], "--output-dir", str(out), f"data.train={rows}",
            "data.validation=null", "data.max_samples=null", "train.zero_shot_eval=false", "method.name=lora",
            "method.r=8", "method.alpha=32", "method.dropout=0.1", f"method.target_modules={LORA_TARGETS}",
            f"data.max_length={w['max_length']}", f"train.batch_size={w['batch_size']}", f"train.lr={w['lr']}",
            f"train.warmup_ratio={w.get('warmup', 0.05)}", "train.epochs=1", "train.grad_accum=1", "train.logging_steps=1000",
            f"train.seed={seed}", *w.get("lmtune", [])]


def same_ids(w: dict, rows: Path, ref: Path, seed: int) -> None:
    """Stop unless lmtune tokenises the rows into exactly the reference's ids and labels, row by row."""
    from lmtune.config import load_config
    from lmtune.data.dataset import read_splits
    from lmtune.loading import load_tokenizer_of, make_task
    from lmtune.training.prepare import tokenize_splits

    cfg = load_config(ROOT / w["config"], lmtune_train_args(w, rows, ref / "unused", seed)[4:])
    tokenizer = load_tokenizer_of(cfg)
    ds = tokenize_splits(cfg, read_splits(cfg.data, cfg.train.seed), tokenizer, make_task(cfg, tokenizer))["train"][0]
    mine = [[list(i), list(l)] for i, l in zip(ds["input_ids"], ds["labels"])]
    theirs = json.loads((ref / "ids.json").read_text())
    differ = sum(a != b for a, b in zip(mine, theirs)) + abs(len(mine) - len(theirs))
    if differ:
        sys.exit(f"lmtune's ids differ from the reference's in {differ} of {len(theirs)} rows")
    print(f"[seed] token for token: lmtune's {len(mine)} rows equal the reference's ids and labels", flush=True)


def workload(name: str, w: dict, tmp: Path, extra: list[str], variants: list[str], model_dir: str, seed: int) -> dict:
    rows = sample_rows(ROOT / w["train"], w["rows"], tmp / f"{name}-train.jsonl")
    validation = sample_rows(ROOT / w["validation"], w["eval_rows"], tmp / f"{name}-validation.jsonl")
    ref = tmp / f"{name}-reference"
    print(f"[{name}] reference recipe ...", flush=True)
    run([sys.executable, str(ROOT / "bench/reference_recipe.py"), "--workload", name, "--rows", str(rows),
         "--out", str(ref), "--model", model_dir, "--max-length", str(w["max_length"]),
         "--batch-size", str(w["batch_size"]), "--lr", str(w["lr"]), "--system", w.get("system", SYSTEM) or "",
         "--seed", str(seed), "--warmup-ratio", str(w.get("warmup", 0.05)), "--labels", w.get("labels", "negative,positive")])
    r = json.loads((ref / "result.json").read_text())
    if name == "seed":
        same_ids(w, rows, ref, seed)
    results = {}
    for i, variant in enumerate(variants):
        label = f"lmtune {variant}".strip()
        mine = tmp / f"{name}-lmtune-{i}"
        print(f"[{name}] {label} ...", flush=True)
        run([sys.executable, "-m", "lmtune", *lmtune_train_args(w, rows, mine, seed), *extra, *variant.split()])
        m = json.loads((mine / "metrics.json").read_text())["train"]
        print(f"[{name}] scoring {label} on {validation.name} ...", flush=True)
        results[label] = {"runtime_s": m["runtime_s"], "steps": m["steps"], "samples": m["samples"], "tokens": m["tokens"],
                          "peak_memory_mb": m["peak_memory_mb"], "metric": evaluate(mine, validation)[w["metric"]]}
        config = mine / "config.yaml"
    shutil.copy(config, ref / "config.yaml")  # the same data settings, to score it the same way
    print(f"[{name}] scoring the reference on {validation.name} ...", flush=True)
    return {"reference": {**r, "metric": evaluate(ref, validation)[w["metric"]]}, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="classification,sft")
    parser.add_argument("--lmtune", nargs="*", default=[], help="extra lmtune overrides (key=value)")
    parser.add_argument("--rows", type=int, help="training rows (a quick check; default: 2,000 / 500)")
    parser.add_argument("--eval-rows", type=int, help="validation rows (default: all 1,066 / 200)")
    parser.add_argument("--seed", type=int, default=42, help="training seed on both sides (the rows stay the same)")
    parser.add_argument("--variants", nargs="*", default=[""], help='lmtune runs, each with these extra overrides ("" = none)')
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from lmtune.config import ModelConfig
    from lmtune.model.load import resolve_model_path

    model_dir = resolve_model_path(ModelConfig())
    body, head = model_sizes(model_dir)
    gemm = gemm_rate_gflops()
    lines = [f"bf16 GEMM rate on this machine: {gemm:.0f} GFLOP/s; SmolLM2 blocks {body / 1e6:.1f}M parameters, "
             f"LM head {head / 1e6:.1f}M; useful FLOPs = 4 x blocks per real token + 4 x head per target token",
             "", "| workload | recipe | real tokens/s | samples/s | train s | peak RSS (GB) | validation | share of GEMM rate |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads.split(","):
            w = {**WORKLOADS[name], **{k: v for k, v in (("rows", args.rows), ("eval_rows", args.eval_rows)) if v}}
            result = workload(name, w, Path(tmp), args.lmtune, args.variants, model_dir, args.seed)
            ref = result["reference"]
            flops = 4 * body * ref["tokens"] + 4 * head * ref["targets"]  # the same rows on both sides
            start = len(lines)
            for recipe, x in result.items():
                share = flops / x["runtime_s"] / 1e9 / gemm
                lines.append(f"| {name} | {recipe} | {x['tokens'] / x['runtime_s']:,.0f} | {x['samples'] / x['runtime_s']:.2f} | "
                             f"{x['runtime_s']:.0f} | {x['peak_memory_mb'] / 1024:.2f} | {w['metric']} {x['metric']:.4f} | {100 * share:.0f}% |")
            for recipe, mine in result.items():
                if recipe == "reference":
                    continue
                speed = (mine["tokens"] / mine["runtime_s"]) / (ref["tokens"] / ref["runtime_s"])
                lines.append(f"| {name} | **{recipe} / reference** | **{speed:.2f}x** | "
                             f"{(mine['samples'] / mine['runtime_s']) / (ref['samples'] / ref['runtime_s']):.2f}x | | "
                             f"{mine['peak_memory_mb'] / ref['peak_memory_mb']:.2f}x | {mine['metric'] - ref['metric']:+.4f} | |")
            print("\n".join(lines[start:]), flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
