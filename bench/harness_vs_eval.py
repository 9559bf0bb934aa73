"""The harness path (`lmtune bench`) against `lmtune eval` on the same rows, in one process:
accuracy (must agree within one row) and wall time (the harness must be at most 1.5x slower).

    .venv/bin/python bench/harness_vs_eval.py RUN_DIR [--rows N]

RUN_DIR: a label-words run trained with the demo's prompt (configs/sentiment_lora.yaml). Both
sides load the run from disk, score the rotten-tomatoes test rows in the run's chat template with
the label words 'negative' / 'positive', and are timed from loading to the score.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "examples" / "data" / "rotten_tomatoes" / "test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--rows", type=int, default=None, help="default: all 1,066 test rows")
    args = parser.parse_args()

    from lmtune.eval.bench import BenchOptions, bench_model, task_manager
    from lmtune.eval.evaluate import evaluate_run
    from lmtune.run_dir import RunDir

    run = RunDir.open(args.run_dir)
    rows = TEST.read_text().splitlines()[: args.rows]
    data = Path(tempfile.mkdtemp()) / "rotten_tomatoes"
    data.mkdir()
    (data / "test.jsonl").write_text("\n".join(rows) + "\n")
    (data / "train.jsonl").write_text(rows[0] + "\n")  # the task declares a few-shot split; 0-shot reads none
    batch = run.config().train.eval_batch_size  # lmtune eval batches by it too

    options = BenchOptions(["rotten_tomatoes"], batch_size=batch, data_dir=str(data.parent))
    manager = task_manager(options)
    start = time.perf_counter()
    harness = bench_model(run, options, manager)["tasks"]["rotten_tomatoes"]
    harness_s = time.perf_counter() - start

    start = time.perf_counter()
    own = evaluate_run(run, str(data / "test.jsonl"), max_generations=0)
    own_s = time.perf_counter() - start

    n = len(rows)
    result = {
        "rows": n, "batch_size": batch,
        "harness_accuracy": harness["metrics"]["acc"], "lmtune_eval_accuracy": own["accuracy"],
        "rows_apart": round(abs(harness["metrics"]["acc"] - own["accuracy"]) * n, 2),
        "harness_s": round(harness_s, 1), "lmtune_eval_s": round(own_s, 1), "harness_over_eval": round(harness_s / own_s, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
