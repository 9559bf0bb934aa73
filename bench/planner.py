"""How close `lmtune plan` comes to real runs: predicted vs measured peak RSS and training time.

    .venv/bin/python bench/planner.py [--methods full,lora,qlora,prompt_tuning] [--steps 6] [--set KEY=VALUE ...]

SmolLM2 SFT on GSM8K rows (configs/gsm8k_sft_lora.yaml), for each method at batch 4 and 8 and
max_length 128 and 256: the planner's prediction (in this process), then `lmtune train` on exactly
the rows the plan counted (batch x steps rows: one epoch), in its own process. Prints a table of
predicted / measured peak memory and time, and the ratios. Results go to docs/planner.md.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/gsm8k_sft_lora.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="full,lora,qlora,prompt_tuning")
    parser.add_argument("--batches", default="4,8")
    parser.add_argument("--lengths", default="128,256")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, e.g. method.train_last_layers=10")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from lmtune.config import load_config
    from lmtune.plan.command import plan

    lines = ["| method | batch | max_length | peak predicted (GB) | peak measured (GB) | ratio | "
             "time predicted (s) | time measured (s) | ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method in args.methods.split(","):
        for batch in map(int, args.batches.split(",")):
            for length in map(int, args.lengths.split(",")):
                overrides = [f"method.name={method}", f"train.batch_size={batch}", f"data.max_length={length}",
                             f"data.max_samples={batch * args.steps}", "data.validation=null", "train.epochs=1",
                             "train.zero_shot_eval=false", "train.logging_steps=1000", "train.warmup_ratio=0", *args.set]
                with redirect_stdout(io.StringIO()):
                    predicted = plan(load_config(ROOT / CONFIG, overrides))[0]
                with tempfile.TemporaryDirectory() as tmp:
                    done = subprocess.run([sys.executable, "-m", "lmtune", "train", CONFIG, "--output-dir", f"{tmp}/run",
                                           *overrides], cwd=ROOT, capture_output=True, text=True)
                    if done.returncode != 0:
                        sys.exit(done.stderr[-2000:])
                    t = json.loads(Path(f"{tmp}/run/metrics.json").read_text())["train"]
                peak, measured = predicted.memory.peak / 2**30, t["peak_memory_mb"] / 1024
                lines.append(f"| {method} | {batch} | {length} | {peak:.2f} | {measured:.2f} | {peak / measured:.2f} | "
                             f"{predicted.seconds_per_epoch:.0f} | {t['runtime_s']:.0f} | {predicted.seconds_per_epoch / t['runtime_s']:.2f} |")
                print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
