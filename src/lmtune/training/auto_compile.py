"""train.compile=auto: compile the blocks part-way into a run, once its first steps show that the
steps left will win the compile time back.

Compiled blocks make a LoRA step on this CPU 9-11% faster (docs/benchmarks.md: 9% at 8 x 32
tokens, 11% at 16 x ~50 and at 8 x ~250), but compiling costs 75-80 s the first time a machine sees
a model's shapes and 6-10 s once inductor's on-disk cache holds them. So the run starts
eager, times a few steps, and compiles when `steps left x step time x GAIN` exceeds MARGIN times the
expected cost: the warm cost when an earlier run of the same shapes compiled here (a marker file
beside the cache), else the cold one. The decision and its numbers are reported as an event.

Only where it was measured: plain LoRA on a CPU, one process, no gradient checkpointing or packing.
Elsewhere auto means off; `train.compile=true` compiles from the first step anywhere.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Callable, Optional

import torch
from transformers import TrainerCallback

from lmtune.tasks import prompt_once
from lmtune.training.compile import compile_blocks, inductor_cache_dir

GAIN = 0.09  # the least a compiled step saved here (the seed recipe's 8 x 32 tokens)
COST_S = {True: 10.0, False: 80.0}  # compiling, warm cache / cold, on this 2-core CPU (SmolLM2)
MARGIN = 2.0  # compile only when the expected saving is twice the expected cost
TIMED = (2, 10)  # steps timed: from the end of the 2nd (the first ones warm up) to the end of the 10th


def why_not_auto(cfg, device: torch.device, world_size: int) -> Optional[str]:
    """None when train.compile=auto may compile this run, else why it stays eager."""
    m, t = cfg.method, cfg.train
    reasons = [(device.type != "cpu", "measured on CPUs only"), (world_size > 1, "one process only"),
               (m.name != "lora", "plain LoRA only"),
               (t.gradient_checkpointing, "not with gradient checkpointing"), (cfg.data.packing, "not with packing"),
               (prompt_once.expected(cfg, device.type), "the batches' common prompt is computed once (tasks/prompt_once.py), "
                "which compiled blocks would stop"),
               # compiled blocks attend with sdpa, slower here than the chunked attention they would replace
               (cfg.model.attn_implementation is None, "not with lmtune's chunked attention (model.attn_implementation unset)")]
    return next((why for bad, why in reasons if bad), None)


def shapes_key(model, cfg, precision: str) -> str:
    """What decides the compiled graphs: the block's shapes, the method's, the precision, torch."""
    c = model.config
    facts = [torch.__version__, c.model_type, c.hidden_size, getattr(c, "intermediate_size", None),
             c.num_attention_heads, getattr(c, "num_key_value_heads", None), getattr(c, "_attn_implementation", None),
             cfg.method.r, cfg.method.dropout > 0, sorted(cfg.method.target_modules) if isinstance(cfg.method.target_modules, list)
             else cfg.method.target_modules, precision]
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:16]


class AutoCompile(TrainerCallback):
    def __init__(self, key: str, emit: Callable[[dict], None]):
        self.marker = inductor_cache_dir() / "warm" / key
        self.emit = emit
        self.steps = 0  # optimizer steps in this process (a resumed run counts from its restart)
        self.started: Optional[float] = None
        self.compiled_at: Optional[int] = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps += 1
        if self.steps == TIMED[0]:
            self.started = time.perf_counter()
        elif self.steps == TIMED[1]:
            self.decide(model, state, (time.perf_counter() - self.started) / (TIMED[1] - TIMED[0]))
        elif self.compiled_at is not None and state.global_step == self.compiled_at + 2 and not self.marker.exists():
            # Two compiled steps ran: their graphs are in the cache for the next run of these shapes.
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.touch()

    def decide(self, model, state, step_s: float) -> None:
        left = state.max_steps - state.global_step
        warm = self.marker.exists()
        saving, cost = left * step_s * GAIN, COST_S[warm]
        compile_now = saving > MARGIN * cost
        self.emit({"event": "auto_compile", "step": state.global_step, "compiled": compile_now, "steps_left": left,
                   "step_s": round(step_s, 3), "saving_s": round(saving), "cost_s": cost, "warm_cache": warm})
        if compile_now:
            self.compiled_at = state.global_step
            self.emit({"event": "phase", "name": "compiling", "blocks": compile_blocks(model)})


def compiled_from_step(cfg, trainer) -> Optional[int]:
    """For metrics.json: 0 with train.compile=true, the step auto compiled after, None if eager throughout."""
    if cfg.train.compile is True:
        return 0
    return next((c.compiled_at for c in trainer.callback_handler.callbacks if isinstance(c, AutoCompile)), None)
