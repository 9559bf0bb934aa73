"""How fast this machine trains a model of this shape: measured in a few seconds on one real
transformer block (the model's width, the method applied), or from the GEMM rate for blocks too big
to build here, or given by the user."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from lmtune.plan.busy import other_load
from lmtune.plan.estimate import Batch, flops_per_step, head_flops
from lmtune.plan.shape import model_shape

# A block larger than this is not built to be timed (a 70B block is 0.9B parameters).
MAX_TIMED_BLOCK_PARAMS = 60_000_000
# Share of the bf16 GEMM rate that training reaches when it cannot be timed (measured on SmolLM2 here).
DEFAULT_EFFICIENCY = 0.25


@dataclass
class Rate:
    flops_per_s: float  # useful training FLOP/s for this model, method and batch
    how: str  # how it was obtained, shown to the user
    optimizer_s_per_param: float  # one AdamW step, per trained parameter
    optimizer_first_per_param: float = 0.0  # the first step's extra (it allocates the optimizer state)
    step_s: float | None = None  # forward + backward of one micro-batch through the whole model, when timed
    step_flops: float = 0.0  # the FLOPs of that step (to scale it to another method)
    first_step_s: float = 0.0  # what the first forward + backward costs once more (allocations, kernel choice)
    busy: float | None = None  # share of the CPUs that other processes used while timing (busy.py)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _timed(fn, seconds: float) -> tuple[float, float]:
    """(seconds per call once warm, extra seconds of the first call)."""
    begin = time.perf_counter()
    fn()  # warm-up: allocations, kernel selection
    if device().type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - begin
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        fn()
        count += 1
    if device().type == "cuda":
        torch.cuda.synchronize()
    each = (time.perf_counter() - start) / count
    return each, max(0.0, first - each)


def gemm_rate(dtype=torch.bfloat16, seconds: float = 1.0) -> float:
    a = torch.randn(2048, 2048, dtype=dtype, device=device())
    b = torch.randn(2048, 2048, dtype=dtype, device=device())
    return 2 * 2048**3 / _timed(lambda: a @ b, seconds)[0]


def adamw_seconds_per_param(seconds: float = 0.5) -> tuple[float, float]:
    """One torch AdamW step (the default optimizer) with gradient clipping, timed on 4M fp32
    parameters: (seconds per parameter once warm, extra per parameter of the first step, which
    allocates the optimizer state)."""
    p = torch.nn.Parameter(torch.randn(4 * 2**20, device=device()))
    p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW([p], lr=1e-4)

    def step():
        torch.nn.utils.clip_grad_norm_([p], 1.0)
        optimizer.step()

    each, first = _timed(step, seconds)
    return each / p.numel(), first / p.numel()


def with_layers(config, layers: int, vocab: int | None = None):
    """A copy of a transformers config with fewer blocks (and optionally a smaller vocabulary)."""
    small = copy.deepcopy(config)
    small.num_hidden_layers = layers
    if isinstance(getattr(small, "layer_types", None), list):
        small.layer_types = small.layer_types[:layers]
    if vocab is not None:
        small.vocab_size = vocab
    return small


def _model(config, cfg, dtype: torch.dtype, tokenizer, blocks_only: bool):
    """The model as the run will train it: the method applied (QLoRA on a real 4-bit base), or,
    for the methods that train no block weights (prompt methods, freeze), every weight frozen."""
    from transformers import AutoModelForCausalLM

    from lmtune.methods import METHODS
    from lmtune.training.prepare import apply_method

    method = METHODS.get(cfg.method.name)
    torch.manual_seed(0)
    if method.quantization and blocks_only:
        model = _quantized(config, cfg, dtype)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device())
    attend_as_trained(model, cfg.model.attn_implementation)
    if method.plan.trains_base or (blocks_only and timed_with_method(cfg.method.name)):
        model = apply_method(every_block(cfg.method), model, tokenizer)  # as `lmtune train` applies it
    else:  # frozen: prompt methods and freeze in the blocks, the adapters' embeddings and head
        model.requires_grad_(False)
    return model.train()


def timed_with_method(name: str) -> bool:
    """Whether the timed block carries the method (its weights or adapters train) or runs frozen,
    input gradients only (prompt methods; freeze, whose trained blocks are scaled to by FLOPs)."""
    from lmtune.methods import METHODS

    plan = METHODS.get(name).plan
    return plan.trains_base or plan.adapts_blocks


def every_block(method_options):
    """The method's options with every block adapted: the planner times one adapted block and
    scales the depth that `last_layers` leaves to the backward pass by FLOPs (shape.backward_share)."""
    if getattr(method_options, "last_layers", None) is None:
        return method_options
    return method_options.model_copy(update={"last_layers": None})


def attend_as_trained(model, attention) -> None:
    """The attention `lmtune train` will use: eager when asked for, lmtune's chunked attention when
    unset (load_for_training); sdpa and flash-attention as transformers loaded them."""
    from lmtune.model.chunked_attention import use_chunked_attention

    if attention == "eager":
        model.set_attn_implementation("eager")
    elif attention is None:
        use_chunked_attention(model)


def _quantized(config, cfg, dtype: torch.dtype):
    """One block loaded through bitsandbytes, as a QLoRA run loads its base (4-bit matmuls included)."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from lmtune.methods import METHODS
    from lmtune.model.load import keep_4bit_layout_for_training

    with tempfile.TemporaryDirectory() as tmp:
        AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, device_map={"": device()},
                                                     quantization_config=METHODS.get(cfg.method.name).quantization(cfg.method, dtype))
    keep_4bit_layout_for_training(model)
    return model


def _step_seconds(model, batch: Batch, length: int, precision: str, seconds: float) -> tuple[float, float]:
    """Forward and backward of one micro-batch with the run's loss (cross-entropy at the target
    positions, upcast a few rows at a time as training does). The input embeddings carry a
    gradient, as the output of the blocks below would: otherwise the lowest block would skip its
    input gradients, which every other block computes."""
    from lmtune.model.precision import autocast
    from lmtune.tasks.token_cross_entropy import token_cross_entropy

    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch.size, length), generator=generator).to(device())
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, -max(1, min(length, round(batch.targets))):] = True
    targets = torch.randint(0, vocab, (int(keep.sum()),), generator=generator).to(device())
    embed = model.get_input_embeddings()

    def step():
        with autocast(device(), precision):
            hidden = embed(ids)
            if not hidden.requires_grad:
                hidden = hidden + torch.zeros((), dtype=hidden.dtype, device=hidden.device, requires_grad=True)
            logits = model(inputs_embeds=hidden, use_cache=False, logits_to_keep=keep).logits
        token_cross_entropy(logits.reshape(-1, vocab), targets).mean().backward()
        model.zero_grad(set_to_none=True)

    return _timed(step, seconds)


def measure(config, cfg, batch: Batch, precision: str, tokenizer=None, seconds: float = 2.0) -> Rate:
    """Time one block of the model (tiny vocabulary, the method applied) and, apart, the embeddings,
    final norm, LM head and loss at the real vocabulary, on random tokens of the run's computed
    length (padding included); the whole step is the blocks' time times the depth plus the rest.
    On a CPU it also says what share of the machine other processes took meanwhile."""
    with other_load() as load:
        rate = _measure(config, cfg, batch, precision, tokenizer, seconds)
    rate.busy = load.others if device().type == "cpu" else None
    return rate


def _measure(config, cfg, batch: Batch, precision: str, tokenizer, seconds: float) -> Rate:
    from lmtune.hardware import DTYPES
    from lmtune.methods import METHODS
    from lmtune.model.precision import weights_dtype

    optimizer, optimizer_first = adamw_seconds_per_param()
    one = with_layers(config, 1, vocab=256)
    shape, full = model_shape(one), model_shape(config)
    if shape.block_params > MAX_TIMED_BLOCK_PARAMS:
        rate = gemm_rate(DTYPES["bf16" if precision == "fp32" else precision]) * DEFAULT_EFFICIENCY
        return Rate(rate, f"{DEFAULT_EFFICIENCY:.0%} of the measured GEMM rate (a block is too big to time here)",
                    optimizer, optimizer_first)
    dtype = weights_dtype(cfg.model.dtype, precision, METHODS.get(cfg.method.name).freezes_base)
    length = max(1, round(batch.computed_length))
    block = _model(one, cfg, dtype, tokenizer, blocks_only=True)
    block_s, block_first = _step_seconds(block, batch, length, precision, seconds)
    trainable = sum(p.numel() for p in block.parameters() if p.requires_grad)
    flops = flops_per_step(shape, cfg.method.name, trainable, Batch(batch.size, length, length, batch.targets), False)
    if full.head_params <= MAX_TIMED_BLOCK_PARAMS:
        rest = _model(with_layers(config, 0), cfg, dtype, tokenizer, blocks_only=False)
        rest_s, rest_first = _step_seconds(rest, batch, length, precision, seconds / 2)
    else:  # too big to build here: the head's FLOPs at the block's rate
        rest_s, rest_first = head_flops(full, cfg.method.name, batch) / (flops / block_s), 0.0
    return Rate(flops / block_s, "timed on one block and on the LM head of this model on this machine", optimizer,
                optimizer_first, step_s=full.layers * block_s + rest_s, first_step_s=full.layers * block_first + rest_first)
