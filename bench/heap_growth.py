"""Resident memory over a long CPU run of length-grouped batches, with and without malloc_trim.

    .venv/bin/python bench/heap_growth.py [--steps 110] [--trim-every 0,1,10]

Trains the demo config (configs/sentiment_lora.yaml, no validation, no zero-shot evaluation) for
--steps steps once per --trim-every value, each in its own process so that its peak RSS is its own;
0 = never trim, N = glibc's malloc_trim(0) after every N-th optimizer step (from a reporter's
Trainer callback, so lmtune itself is unchanged). Prints resident memory sampled each second (each
new high, 50 MB or more above the last), the peak, the training time and the loss, which must not move.
Results: docs/planner.md ("A long run on a CPU").
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def one(steps: int, trim_every: int) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from transformers import TrainerCallback

    from lmtune.config import load_config
    from lmtune.training.run import train

    trim = ctypes.CDLL("libc.so.6").malloc_trim

    class Trim(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if trim_every and state.global_step % trim_every == 0:
                trim(0)

    class TrimReporter:  # reporters may add Trainer callbacks (lmtune.training.reporters)
        def trainer_callbacks(self):
            return [Trim()]

        def emit(self, event):
            pass

    samples, done = [], threading.Event()

    def sample():
        while not done.wait(1.0):
            samples.append(round(rss_mb()))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs/sentiment_lora.yaml", [
            "data.validation=null", "train.zero_shot_eval=false", f"train.max_steps={steps}", f"output.dir={tmp}/run"])
        threading.Thread(target=sample, daemon=True).start()
        result = train(cfg, reporters=[TrimReporter()])
        done.set()
    highs = [mb for i, mb in enumerate(samples) if mb > max(samples[:i], default=0) + 50]  # the climb
    t = result.metrics["train"]
    print(json.dumps({"trim_every": trim_every, "peak_mb": t["peak_memory_mb"], "runtime_s": t["runtime_s"],
                      "loss": t["train_loss"], "rss_highs_mb": highs}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=110)
    parser.add_argument("--trim-every", default="0,1,10")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        return one(args.steps, args.one)
    for every in map(int, args.trim_every.split(",")):
        done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", str(every)],
                              cwd=ROOT, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        print(lines[-1] if done.returncode == 0 and lines else f"trim every {every}: failed: {done.stderr[-300:]}", flush=True)


if __name__ == "__main__":
    main()
