"""Where a training step of `lmtune train` spends its time: torch.profiler over a few steps.

    .venv/bin/python bench/profile_step.py [--config CONFIG] [--steps 5] [--warmup 3] [--shapes] [key=value ...]

Runs the real training path in this process (default: the demo, configs/sentiment_lora.yaml),
profiles --steps optimizer steps after --warmup, and prints: the wall time per step, the share of
it inside torch operators (the rest is Python: the Trainer, peft, lmtune, the data loader), the
time the collator took per batch, and the operators with the most self time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import lmtune.training.fit as fit_module
import lmtune.training.run as run_module
from lmtune.config import load_config
from lmtune.tasks.base import Task

ROOT = Path(__file__).resolve().parents[1]


class ProfileSteps(TrainerCallback):
    def __init__(self, warmup: int, steps: int, shapes: bool = False):
        self.warmup, self.steps = warmup, steps
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=shapes)
        self.started = self.wall = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.profiler.start()
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup + self.steps:
            self.wall = time.perf_counter() - self.started
            self.profiler.stop()
            control.should_training_stop = True


def timed(collate, spent: list[float]):
    def wrapper(rows):
        start = time.perf_counter()
        batch = collate(rows)
        spent.append(time.perf_counter() - start)
        return batch
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/sentiment_lora.yaml"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    args, overrides = parser.parse_known_args()
    profile = ProfileSteps(args.warmup, args.steps, args.shapes)
    build_callbacks = fit_module.build_callbacks
    fit_module.build_callbacks = lambda *a: [*build_callbacks(*a), profile]
    collate_times: list[float] = []
    collator = Task.collator
    Task.collator = lambda self, packing=False: timed(collator(self, packing), collate_times)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(args.config, [*overrides, f"output.dir={out}/run", "train.zero_shot_eval=false",
                                        "data.validation=null", f"train.max_steps={args.warmup + args.steps + 1}"])
        run_module.train(cfg)
    events = profile.profiler.key_averages(group_by_input_shape=args.shapes)
    # aten operators' own time (kernels and their dispatch); record_function ranges such as the
    # optimizer's step hold Python and are left out.
    in_ops = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6
    per_step = profile.wall / args.steps
    print(f"\n{args.config} {' '.join(overrides)}: {args.steps} profiled steps after {args.warmup}")
    print(f"| wall time per step | inside aten operators | outside (Python) | collator per batch |\n"
          f"| ---: | ---: | ---: | ---: |\n"
          f"| {per_step:.3f} s | {100 * min(in_ops / profile.wall, 1):.1f}% | {100 * max(1 - in_ops / profile.wall, 0):.1f}% | "
          f"{1000 * sum(collate_times) / max(len(collate_times), 1):.2f} ms |\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40,
                       max_shapes_column_width=70))


if __name__ == "__main__":
    main()
