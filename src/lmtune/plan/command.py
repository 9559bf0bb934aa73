"""`lmtune plan`: what a run will cost in memory and time, before it starts, and what to change
when it does not fit."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmtune.config import Config, validate_config
from lmtune.methods import METHODS
from lmtune.tasks import TASKS, prompt_once
from lmtune.plan.estimate import GB, Batch, Memory, flops_per_step, memory
from lmtune.plan.shape import ModelShape, model_shape, trained
from lmtune.plan.throughput import Rate, adamw_seconds_per_param, every_block, timed_with_method

@dataclass
class Plan:
    method: str
    total: int
    trainable: int
    memory: Memory
    memory_checkpointed: Memory
    seconds_per_epoch: float | None
    steps_per_epoch: int
    backward: float = 1.0  # the share of the blocks the backward pass runs through


def available_memory(device: str) -> tuple[float, str]:
    """Free GPU memory, or the RAM the kernel says is available."""
    import torch

    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free, "free GPU memory"
    with open("/proc/meminfo", encoding="utf-8") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024, "available RAM"


def batch_of(cfg: Config, stats: dict | None) -> Batch:
    """The micro-batch the run will see: from the tokenised data when there is some, else max_length."""
    virtual = getattr(cfg.method, "num_virtual_tokens", 0) if METHODS.get(cfg.method.name).virtual_tokens == "sequence" else 0
    length = cfg.data.max_length
    task = TASKS.get(cfg.task.name)
    size = cfg.train.batch_size * task.sequences_per_row(cfg)  # a preference pair is two sequences
    if stats:  # ... unless its prompt is shared: then one row holds both answers (data_stats measured it)
        size = cfg.train.batch_size if task.shares_prompt(cfg) else size
        return Batch(size, stats["max"], stats["mean"], stats["targets"], virtual, stats["padded"])
    return Batch(size, length, length, task.targets_per_row(cfg), virtual)  # without data: the longest each can be


def plan_method(config, shape: ModelShape, cfg: Config, batch: Batch, rows: int | None, rate: Rate | None,
                device: str, precision: str, tokenizer=None) -> Plan:
    learns = trained(config, cfg.method, tokenizer)
    trainable, name = learns.params, cfg.method.name
    kwargs = dict(precision=precision, optimizer=cfg.train.optimizer, device=device,
                  attention=cfg.model.attn_implementation or "sdpa", double_quant=getattr(cfg.method, "double_quant", True),
                  lora_dropout=getattr(cfg.method, "dropout", 0.0), backward=learns.backward)
    plain = memory(shape, name, trainable, batch, checkpointing=False, **kwargs)
    checkpointed = memory(shape, name, trainable, batch, checkpointing=True, **kwargs)
    extra = task_extra_cost(cfg, shape, batch, precision)
    for m in (plain, checkpointed):
        m.weights += extra.weights
    t = cfg.train
    steps = math.ceil(rows / (t.batch_size * t.grad_accum)) if rows else 0
    seconds = None
    if rate is not None and rows:
        flops = flops_per_step(shape, name, trainable, batch, t.gradient_checkpointing, kwargs["backward"]) + extra.flops
        if rate.step_s is None:
            micro = flops / rate.flops_per_s
        else:  # the step timed for the configured method, scaled to this method's (and checkpointing's) FLOPs
            micro = rate.step_s * flops / rate.step_flops
        optimizer_step = trainable * rate.optimizer_s_per_param
        seconds = t.epochs * steps * (t.grad_accum * micro + optimizer_step) + rate.first_step_s
        seconds += trainable * rate.optimizer_first_per_param
    return Plan(name, shape.total_params, trainable, plain, checkpointed, seconds, steps, learns.backward)


@dataclass
class ExtraCost:
    weights: float = 0.0  # bytes of a frozen copy of the model
    flops: float = 0.0  # per micro-batch, besides the training step: forward passes


def task_extra_cost(cfg: Config, shape: ModelShape, batch: Batch, precision: str) -> ExtraCost:
    """What a task runs besides its training step. A task that compares with a reference model (DPO)
    runs it forward on every batch, and methods that train the base keep a frozen 16-bit copy of it
    (adapter methods switch the adapter off). GRPO generates its answers first: one forward per
    generated token, through the blocks and the LM head (a lower bound: decoding on a CPU reaches
    less of the machine's rate than training does)."""
    task = TASKS.get(cfg.task.name)
    extra = ExtraCost()
    if task.needs_reference(cfg) and not task.reference_precomputed(cfg):  # precomputed: one pass before training
        if METHODS.get(cfg.method.name).saves == "model":
            extra.weights = shape.total_params * (4 if precision == "fp32" else 2)
        extra.flops += batch.size * batch.computed_length * 2 * shape.block_params + batch.size * batch.targets * 2 * shape.head_params
    generated = task.generated_tokens_per_row(cfg) * cfg.train.batch_size
    extra.flops += generated * 2 * (shape.block_params + shape.head_params)
    return extra


def with_method(cfg: Config, name: str) -> Config:
    raw = cfg.model_dump(mode="json")
    raw["method"] = {"name": name}
    raw["train"]["gradient_checkpointing"] = False
    raw["data"]["packing"] = False
    return validate_config(raw, "<compare>")


def suggestions(plan: Plan, cfg: Config, shape: ModelShape, batch: Batch, available: float, device: str,
                precision: str) -> list[str]:
    """Changes that bring the peak under the memory available, cheapest first."""
    tips = []
    if plan.memory_checkpointed.peak <= available and not cfg.train.gradient_checkpointing:
        tips.append("train.gradient_checkpointing=true (about one more forward pass of time)")
    lighter = METHODS.get(plan.method).plan.lighter
    if lighter:
        trainable = 0 if METHODS.get(plan.method).plan.trains_base else plan.trainable
        q = memory(shape, lighter, trainable, batch, precision=precision, device=device)
        if q.peak <= available:
            tips.append(f"method.name={lighter} (peak {q.peak / GB:.1f} GB)")
    size, accum = cfg.train.batch_size, cfg.train.grad_accum
    while size > 1:
        size, accum = size // 2, accum * 2
        smaller = Batch(size, batch.length, batch.mean_length, batch.targets, batch.virtual_tokens)
        m = memory(shape, plan.method, plan.trainable, smaller, precision=precision, device=device)
        if m.peak <= available:
            tips.append(f"train.batch_size={size} train.grad_accum={accum} (same batch per update; peak {m.peak / GB:.1f} GB)")
            break
    length = batch.length
    while length > 64:
        length //= 2
        shorter = Batch(batch.size, length, min(batch.mean_length, length), min(batch.targets, length), batch.virtual_tokens)
        m = memory(shape, plan.method, plan.trainable, shorter, precision=precision, device=device)
        if m.peak <= available:
            tips.append(f"data.max_length={length} (peak {m.peak / GB:.1f} GB; longer rows are cut)")
            break
    return tips or ["nothing short of a larger machine: the weights alone do not fit"]


def data_stats(cfg: Config, tokenizer, model_config=None, device_type: str = "cpu") -> dict | None:
    """Rows, longest and mean row, and targets per row of the training data, through the real
    pipeline (cached like a training run's); None without training data."""
    if not (cfg.data.train or cfg.data.mix) or cfg.data.streaming:
        return None
    from lmtune.data.tokenize import count_targets
    from lmtune.loading import make_task
    from lmtune.plan.batching import padded_length
    from lmtune.data.dataset import read_data
    from lmtune.training.prepare import tokenize_splits

    splits = {"train": read_data(cfg)["train"]}  # as `lmtune train` reads and tokenises it
    task = make_task(cfg, tokenizer)
    ds, info = tokenize_splits(cfg, splits, tokenizer, task)["train"]
    # A row's sequences (a preference pair: chosen and rejected) are padded together; per sequence below.
    sequences = [(ids, labels) for ids, labels in (("input_ids", "labels"), ("rejected_input_ids", "rejected_labels"))
                 if labels in ds.column_names]
    if sequences:
        answer = 0
        targets = sum(count_targets(ds[labels]) for _, labels in sequences) / len(sequences)
    else:  # prompts alone (GRPO): the model writes the answers, up to their longest
        answer = task.targets_per_row(cfg)
        sequences, targets = [("input_ids", None)], answer * info.rows
    per_sequence = [[len(ids) + answer for ids in ds[column]] for column, _ in sequences]
    if task.shares_prompt(cfg):  # one row per prompt: the prompt once, then each of its answers
        per_sequence = [shared_lengths(ds, sequences, task.sequences_per_row(cfg), answer)]
        targets *= task.sequences_per_row(cfg)  # every answer's targets are in the one row
        sequences = sequences[:1]
    lengths = [max(row) for row in zip(*per_sequence)]
    mean = sum(map(sum, per_sequence)) / (len(sequences) * max(info.rows, 1))
    once = None
    if prompt_once.expected(cfg, device_type, model_config) and sequences == [("input_ids", "labels")]:
        ids, labels = ds["input_ids"], ds["labels"]
        once = lambda batch: prompt_once.computed_once([(ids[i], labels[i]) for i in batch])  # noqa: E731
    computed = mean if cfg.data.packing else padded_length(  # packing concatenates a batch: no padding
        lengths, cfg.train.batch_size, cfg.train.group_by_length, cfg.train.seed, once)
    return {"rows": info.rows, "tokens": info.tokens, "max": max(lengths), "mean": round(mean, 1),
            "padded": computed, "targets": targets / max(info.rows, 1)}


def shared_lengths(ds, sequences: list[tuple[str, str | None]], answers: int, answer_length: int) -> list[int]:
    """Each row's length with its prompt computed once: a pair's common prompt and both answers;
    a GRPO prompt and its `answers` answers of up to `answer_length` tokens."""
    from lmtune.tasks.shared_prefix import common_prefix

    if answer_length:
        return [len(ids) + answers * answer_length for ids in ds["input_ids"]]
    groups = zip(*[list(zip(ds[ids], ds[labels])) for ids, labels in sequences])  # per row: ((ids, labels) per answer)
    return [sum(len(ids) for ids, _ in group) - (len(group) - 1) * common_prefix(list(group)) for group in groups]


def plan(cfg: Config, compare: bool = False, throughput: float | None = None, config=None, tokenizer=None,
         measure_rate: bool = True, console=None) -> list[Plan]:
    """The plans (the configured method, or every method) and the table printed for them (on
    `console`, a rich Console; default the terminal). `config` (a transformers config) skips loading
    the model's own; `throughput` is in GFLOP/s."""
    from lmtune import hardware
    from lmtune.model.precision import resolve_precision

    if config is None:
        from transformers import AutoConfig

        from lmtune.model.load import load_tokenizer, resolve_model_path

        path = resolve_model_path(cfg.model)
        config = AutoConfig.from_pretrained(path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
        tokenizer = tokenizer or load_tokenizer(path, cfg.model)
    device = hardware.device().type
    precision = resolve_precision(cfg.train.precision)
    stats = data_stats(cfg, tokenizer, config, device) if tokenizer is not None else None
    batch = batch_of(cfg, stats)
    shape = model_shape(config)
    rate = None
    if throughput:
        rate = Rate(throughput * 1e9, "given (--throughput)", *adamw_seconds_per_param())
    elif measure_rate and stats:
        from lmtune.plan.throughput import measure

        rate = measure(config, cfg, batch, precision, tokenizer)
        # the timed step: every block adapted (one timed block times the depth), or every block frozen
        timed = trained(config, every_block(cfg.method), tokenizer).params if timed_with_method(cfg.method.name) else 0
        rate.step_flops = flops_per_step(shape, cfg.method.name, timed, batch, False)
    configs = [with_method(cfg, name) for name in METHODS.in_order()] if compare else [cfg]
    plans = [plan_method(config, shape, c, batch_of(c, stats), stats and stats["rows"], rate, device, precision, tokenizer)
             for c in configs]
    from lmtune.plan.report import print_plans

    print_plans(plans, cfg, shape, batch, stats, rate, device, precision, console)
    return plans
