"""Variants of the demo's config over seeds, scored on more rows than the validation split.

    .venv/bin/python bench/demo_variants.py [--seeds 42,1,2] [--out runs/bench_demo_variants] \
        [--variant NAME="key=value key=value" ...]

Trains configs/sentiment_lora.yaml once per seed and variant (default: `task.loss` vocabulary and
label_words; `--variant r32="method.r=32 method.alpha=128"` adds one), zero-shot evaluation off,
and scores each run with `lmtune eval` (reports kept beside the runs) on three sets: the validation
split (the run's own final evaluation), the training rows its seed did not draw (4,530 of 8,530:
the same rows for every variant, never trained on, so a larger set to choose by than the validation
split alone) and the test split, where it also counts the rows whose most likely next word is a
label word (what `lmtune generate` would answer). A run already in --out is not trained again, nor
a set scored again; `--rows N` sets data.max_samples. Variants that draw more rows than others
(`data.max_samples` in their overrides) leave fewer rows unseen: `--unseen-after N` scores every run
on the rows that a draw of N leaves out, the same rows for all of them.
Results: docs/tasks.md ("The loss over the label words only"), docs/benchmarks.md ("The demo's config").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/sentiment_lora.yaml"
TEST = ROOT / "examples/data/rotten_tomatoes/test.jsonl"
VARIANTS = {"vocabulary": "task.loss=vocabulary", "label_words": "task.loss=label_words"}


def lmtune(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "lmtune", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def unseen_rows(seed: int, rows: int | None, out: Path) -> Path:
    """The training rows that lmtune's own draw (data.max_samples, train.seed) leaves out. A larger
    draw with the same seed takes a superset of a smaller one's rows (data/dataset.py's sample)."""
    sys.path.insert(0, str(ROOT / "src"))
    from lmtune.config import load_config
    from lmtune.data.dataset import sample

    cfg = load_config(CONFIG, [f"train.seed={seed}"] + ([f"data.max_samples={rows}"] if rows else []))
    lines = (ROOT / cfg.data.train).read_text(encoding="utf-8").splitlines()
    drawn = set(sample(list(range(len(lines))), cfg.data.max_samples, seed))
    path = out / f"unseen{rows or ''}_seed{seed}.jsonl"
    path.write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in drawn), encoding="utf-8")
    return path


def scored(run: Path, data: Path, name: str) -> dict:
    """lmtune eval's report of the run on data, kept beside the run (and read back when it is there)."""
    report = run.with_name(f"{run.name}.{name}.json")
    if not report.exists():
        lmtune("eval", str(run), "--data", str(data), "--output", str(report))
    return json.loads(report.read_text())


def one(seed: int, variant: str, overrides: str, rows: int | None, out: Path, unseen: Path, unseen_name: str) -> dict:
    run = out / f"{variant}_seed{seed}"
    if not (run / "metrics.json").exists():
        lmtune("train", str(CONFIG), "--output-dir", str(run), "train.zero_shot_eval=false", f"train.seed={seed}",
               *overrides.split(), *([f"data.max_samples={rows}"] if rows else []))
    metrics = json.loads((run / "metrics.json").read_text())
    test = scored(run, TEST, "test")
    return {"seed": seed, "variant": variant, "train_s": metrics["train"]["runtime_s"], "validation": metrics["final"]["accuracy"],
            "unseen_train": scored(run, unseen, unseen_name)["accuracy"], "test": test["accuracy"],
            "label_word_answers": test["label_word_answers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--rows", type=int, default=None, help="data.max_samples (default: the config's)")
    parser.add_argument("--unseen-after", type=int, default=None,
                        help="score on the rows a draw of N leaves out (default: --rows or the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_demo_variants")
    parser.add_argument("--variant", action="append", default=[], help='NAME="key=value ..." (repeatable)')
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or VARIANTS
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in map(int, args.seeds.split(",")):
        after = args.unseen_after or args.rows
        unseen = unseen_rows(seed, after, args.out)
        for variant, overrides in variants.items():
            results.append(one(seed, variant, overrides, args.rows, args.out, unseen, f"unseen{after or ''}"))
            print(json.dumps(results[-1]), flush=True)
    keys = ("validation", "unseen_train", "test", "label_word_answers")
    unseen = f"training rows a draw of {args.unseen_after:,} leaves out" if args.unseen_after else "unseen training rows"
    print(f"\n| variant | seed | train time | validation | {unseen} | test | test rows answered with a label word |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant in variants:
        mine = [r for r in results if r["variant"] == variant]
        mean = {k: statistics.mean(r[k] for r in mine) for k in ("train_s", *keys)}
        for r in [*mine, {**mean, "seed": "mean"}]:
            print(f"| {variant} | {r['seed']} | {r['train_s']:.1f} s | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
