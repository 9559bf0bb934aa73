"""The demo's loss over the whole vocabulary against the loss over the label words only, over seeds.

    .venv/bin/python bench/label_word_loss.py [--seeds 42,1,2] [--out runs/bench_label_word_loss]

Trains configs/sentiment_lora.yaml once per seed and `task.loss` (vocabulary, label_words), zero-shot
evaluation off, and scores each run with `lmtune eval` (reports kept beside the runs) on three sets:
the validation split (the run's own final evaluation), the training rows its seed did not draw (4,530
of 8,530: the same rows for both losses, never trained on, so a larger set to choose by than the
validation split alone) and the test split, where it also counts the rows whose most likely next word
is a label word (what `lmtune generate` would answer). A run already in --out is not trained again,
nor a set scored again. `--rows 64 --seeds 1` is a quick check of the script.
Results: docs/tasks.md ("The loss over the label words only").
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
LOSSES = ("vocabulary", "label_words")


def lmtune(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "lmtune", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def unseen_rows(seed: int, rows: int | None, out: Path) -> Path:
    """The training rows that lmtune's own draw (data.max_samples, train.seed) leaves out."""
    sys.path.insert(0, str(ROOT / "src"))
    from lmtune.config import load_config
    from lmtune.data.dataset import sample

    cfg = load_config(CONFIG, [f"train.seed={seed}"] + ([f"data.max_samples={rows}"] if rows else []))
    lines = (ROOT / cfg.data.train).read_text(encoding="utf-8").splitlines()
    drawn = set(sample(list(range(len(lines))), cfg.data.max_samples, seed))
    path = out / f"unseen_seed{seed}.jsonl"
    path.write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in drawn), encoding="utf-8")
    return path


def scored(run: Path, data: Path, name: str) -> dict:
    """lmtune eval's report of the run on data, kept beside the run (and read back when it is there)."""
    report = run.with_name(f"{run.name}.{name}.json")
    if not report.exists():
        lmtune("eval", str(run), "--data", str(data), "--output", str(report))
    return json.loads(report.read_text())


def one(seed: int, loss: str, rows: int | None, out: Path, unseen: Path) -> dict:
    run = out / f"{loss}_seed{seed}"
    if not (run / "metrics.json").exists():
        lmtune("train", str(CONFIG), "--output-dir", str(run), "train.zero_shot_eval=false", f"train.seed={seed}",
               f"task.loss={loss}", *([f"data.max_samples={rows}"] if rows else []))
    metrics = json.loads((run / "metrics.json").read_text())
    test = scored(run, TEST, "test")
    return {"seed": seed, "loss": loss, "train_s": metrics["train"]["runtime_s"], "validation": metrics["final"]["accuracy"],
            "unseen_train": scored(run, unseen, "unseen")["accuracy"], "test": test["accuracy"],
            "label_word_answers": test["label_word_answers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--rows", type=int, default=None, help="data.max_samples (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench_label_word_loss")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in map(int, args.seeds.split(",")):
        unseen = unseen_rows(seed, args.rows, args.out)
        for loss in LOSSES:
            results.append(one(seed, loss, args.rows, args.out, unseen))
            print(json.dumps(results[-1]), flush=True)
    keys = ("validation", "unseen_train", "test", "label_word_answers")
    print("\n| task.loss | seed | train time | validation | unseen training rows | test | test rows answered with a label word |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for loss in LOSSES:
        mine = [r for r in results if r["loss"] == loss]
        mean = {k: statistics.mean(r[k] for r in mine) for k in ("train_s", *keys)}
        for r in [*mine, {**mean, "seed": "mean"}]:
            print(f"| {loss} | {r['seed']} | {r['train_s']:.1f} s | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
