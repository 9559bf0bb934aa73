"""Sentence embeddings on STS Benchmark's open part (examples/data/stsb): Spearman of the cosine
similarities on the test file before and after one epoch of the cosine loss, full vs LoRA, for
all-MiniLM-L6-v2 and SmolLM2-135M-Instruct, with the training times. Run alone (2 cores):

    .venv/bin/python bench/embedding_stsb.py [--runs minilm-full,minilm-lora,smollm2-full,smollm2-lora]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "examples" / "data" / "stsb" / "test.jsonl"
CONFIG = ROOT / "configs" / "stsb_embedding_minilm.yaml"
RUNS = {  # name -> overrides of configs/stsb_embedding_minilm.yaml
    "minilm-full": [],
    "minilm-lora": ["method.name=lora", "method.r=16", "method.alpha=32", "method.dropout=0.0", "train.lr=5e-4"],
    "smollm2-full": ["model.name=smollm2-135m-instruct", "train.lr=1e-5"],
    "smollm2-lora": ["model.name=smollm2-135m-instruct", "method.name=lora", "method.r=16", "method.alpha=32",
                     "method.dropout=0.0", "train.lr=2e-4"],
}


def spearman_on_test(embedder) -> float:
    from lmtune.tasks.regression import pearson, ranks

    rows = [json.loads(line) for line in TEST.read_text().splitlines() if line.strip()]
    a = embedder.embed([r["sentence1"] for r in rows])[0]
    b = embedder.embed([r["sentence2"] for r in rows])[0]
    cosine = torch.nn.functional.cosine_similarity(a, b).double()
    gold = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    return pearson(ranks(cosine), ranks(gold))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()

    from lmtune.api import load_config, train
    from lmtune.infer.embed import load_embedder

    out_root = Path(tempfile.mkdtemp(prefix="stsb-"))
    results = []
    for name in args.runs.split(","):
        cfg = load_config(CONFIG, [*RUNS[name], f"output.dir={out_root / name}"])
        before = spearman_on_test(load_embedder(cfg.model.name, cfg.task.pooling, cfg.task.normalize))
        start = time.perf_counter()
        result = train(cfg, reporters=[])
        seconds = time.perf_counter() - start
        after = spearman_on_test(load_embedder(out_root / name))
        row = {"run": name, "test_spearman_before": round(before, 4), "test_spearman_after": round(after, 4),
               "validation_spearman_after": round(result.metrics["final"]["spearman"], 4),
               "train_s": round(result.metrics["train"]["runtime_s"], 1), "wall_s": round(seconds, 1),
               "steps": result.metrics["train"]["steps"], "peak_mb": result.metrics["train"]["peak_memory_mb"]}
        print(json.dumps(row), flush=True)
        results.append(row)
    print("| run | test Spearman before | after | validation after | train time (s) | steps | peak memory (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['run']} | {r['test_spearman_before']:.4f} | {r['test_spearman_after']:.4f} | "
              f"{r['validation_spearman_after']:.4f} | {r['train_s']:.0f} | {r['steps']} | {r['peak_mb']:,.0f} |")


if __name__ == "__main__":
    main()
