"""How fast this machine trains a model of this shape: measured in a few seconds on one real
transformer block (the model's width, the method applied), or from the GEMM rate for blocks too big
to build here, or given by the user."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from lmtune.plan.estimate import Batch, flops_per_step
from lmtune.plan.shape import lora_like, model_shape

# A block larger than this is not built to be timed (a 70B block is 0.9B parameters).
MAX_TIMED_BLOCK_PARAMS = 60_000_000
# Share of the bf16 GEMM rate that training reaches when it cannot be timed (measured on SmolLM2 here).
DEFAULT_EFFICIENCY = 0.25


@dataclass
class Rate:
    flops_per_s: float  # useful training FLOP/s for this model, method and batch
    how: str  # how it was obtained, shown to the user
    optimizer_s_per_param: float  # one AdamW step, per trained parameter


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _timed(fn, seconds: float) -> float:
    fn()  # warm-up: allocations, kernel selection
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        fn()
        count += 1
    if device().type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / count


def gemm_rate(dtype=torch.bfloat16, seconds: float = 1.0) -> float:
    a = torch.randn(2048, 2048, dtype=dtype, device=device())
    b = torch.randn(2048, 2048, dtype=dtype, device=device())
    return 2 * 2048**3 / _timed(lambda: a @ b, seconds)


def adamw_seconds_per_param(seconds: float = 0.5) -> float:
    """One torch AdamW step (the default optimizer), timed on 4M fp32 parameters."""
    p = torch.nn.Parameter(torch.randn(4 * 2**20, device=device()))
    p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW([p], lr=1e-4)
    return _timed(optimizer.step, seconds) / p.numel()


def measure(config, cfg, batch: Batch, precision: str, tokenizer=None, seconds: float = 2.0) -> Rate:
    """Train one block of the model (tiny vocabulary, the method applied) on random tokens."""
    from transformers import AutoModelForCausalLM

    from lmtune.hardware import DTYPES
    from lmtune.methods import METHODS
    from lmtune.tasks.base import autocast
    from lmtune.train.run import weights_dtype

    optimizer = adamw_seconds_per_param()
    one = copy.deepcopy(config)
    one.num_hidden_layers, one.vocab_size = 1, 256
    shape = model_shape(one)
    if shape.block_params > MAX_TIMED_BLOCK_PARAMS:
        rate = gemm_rate(DTYPES["bf16" if precision == "fp32" else precision]) * DEFAULT_EFFICIENCY
        return Rate(rate, f"{DEFAULT_EFFICIENCY:.0%} of the measured GEMM rate (a block is too big to time here)", optimizer)
    method = METHODS.get(cfg.method.name)
    dtype = weights_dtype(cfg.model.dtype, precision, method.freezes_base)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(one, dtype=dtype).to(device())
    if cfg.method.name in ("lora", "dora", "qlora", "full", "freeze"):  # prompt methods need the real embeddings
        model = METHODS.get(lora_like(cfg.method).name).apply(model, lora_like(cfg.method), tokenizer)
    model.train()
    length = max(1, round(batch.mean_length))
    ids = torch.randint(0, 256, (batch.size, length), device=device())
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, -max(1, round(batch.targets)):] = True

    def step():
        with autocast(device(), precision):
            out = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
        out.float().sum().backward()

    seconds_per_step = _timed(step, seconds)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = flops_per_step(shape, cfg.method.name, trainable, Batch(batch.size, length, length, batch.targets), False)
    return Rate(flops / seconds_per_step, "timed on one block of this model on this machine", optimizer)
