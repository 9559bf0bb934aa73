"""`lmtune train`: config -> model, data, method -> Trainer -> saved run with metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune import hardware
from lmtune.config import Config, config_to_yaml
from lmtune.data.dataset import read_splits, stream_split, tokenize_split
from lmtune.data.templates import Renderer
from lmtune.errors import ConfigError
from lmtune.methods import METHODS, trainable_summary
from lmtune.model.load import load_model_and_tokenizer
from lmtune.outputs import prepare_output_dir, save_dir_atomic, write_json_atomic, write_text_atomic
from lmtune.report import print_data_summary, print_run_summary
from lmtune.tasks import TASKS
from lmtune.train.optimizers import optimizer_cls_and_kwargs


def resolve_precision(requested: str) -> str:
    precision = hardware.auto_precision() if requested == "auto" else requested
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return precision


def quantization(cfg: Config, precision: str):
    """The quantization config of the base (QLoRA), with the run's precision as compute dtype."""
    method = METHODS.get(cfg.method.name)
    return method.quantization(cfg.method, hardware.DTYPES[precision]) if method.quantization else None


def weights_dtype(requested: str, precision: str, base_frozen: bool) -> torch.dtype:
    """Frozen base weights are held in the 16-bit compute dtype (half the memory, no casts per
    step); trained weights stay fp32 so that small updates are not rounded away."""
    if requested != "auto":
        return hardware.DTYPES[requested]
    return hardware.DTYPES[precision] if base_frozen and precision != "fp32" else torch.float32


def tokenize_splits(cfg: Config, splits: dict, tokenizer, task) -> dict:
    """name -> (tokenised dataset, SplitInfo); a streamed training split is read lazily instead."""
    out = {}
    for name, split in splits.items():
        if name == "train" and cfg.data.streaming:
            out[name] = stream_split(cfg.data.train, cfg.data, task.encode, cfg.train.seed)
        else:
            out[name] = tokenize_split(split, cfg.data, cfg.task, tokenizer, task.encode)
    return out


def training_arguments(cfg: Config, out: Path, precision: str, has_eval: bool):
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps else t.warmup_ratio,
        max_grad_norm=t.max_grad_norm,
        neftune_noise_alpha=t.neftune_noise_alpha,
        seed=t.seed,
        # Length grouping only helps padded batches; a packed batch has no padding to save.
        train_sampling_strategy="group_by_length" if t.group_by_length and not cfg.data.packing else "random",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        eval_strategy="steps" if (t.eval_steps and has_eval) else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps,
        report_to="none",
        remove_unused_columns=False,  # the collator picks its own columns
        dataloader_num_workers=0,  # data is tokenised up front; workers would only compete for cores
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
    )


def save_model(model, tokenizer, out: Path) -> Path:
    """The adapter (PEFT methods) or the whole model, with the tokenizer beside it."""
    from peft import PeftModel

    target = out / ("adapter" if isinstance(model, PeftModel) else "model")

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(target, save)
    return target


def optimizer_arguments(model, cfg: Config) -> dict:
    """Trainer keyword arguments for the optimizer: LoRA+'s own, or train.optimizer by name."""
    lora_plus = lora_plus_optimizer(model, cfg)
    if lora_plus is not None:
        return {"optimizers": (lora_plus, None)}
    return {"optimizer_cls_and_kwargs": optimizer_cls_and_kwargs(cfg)}


def lora_plus_optimizer(model, cfg: Config):
    """LoRA+ (method.lora_plus_ratio): the B matrices learn `ratio` times faster than the A matrices;
    None lets the Trainer build its usual AdamW."""
    ratio = getattr(cfg.method, "lora_plus_ratio", None)
    if not ratio:
        return None
    from peft.optimizers import create_loraplus_optimizer

    t = cfg.train
    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=t.lr, loraplus_lr_ratio=ratio, weight_decay=t.weight_decay,
                                     betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon)


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@dataclass
class RunResult:
    metrics: dict
    model: object  # the trained model, still in memory
    tokenizer: object
    out: Path


def train(cfg: Config) -> RunResult:
    from transformers import set_seed

    from lmtune.train.callbacks import JsonlLogger
    from lmtune.train.trainer import LmtuneTrainer

    out = prepare_output_dir(cfg.output.dir, cfg.output.overwrite)
    write_text_atomic(out / "config.yaml", config_to_yaml(cfg))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)

    precision = resolve_precision(cfg.train.precision)
    method = METHODS.get(cfg.method.name)
    splits = read_splits(cfg.data, cfg.train.seed)
    dtype = weights_dtype(cfg.model.dtype, precision, method.freezes_base)
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype, quantization_config=quantization(cfg, precision))
    task = TASKS.get(cfg.task.name)(cfg, tokenizer, Renderer(tokenizer, cfg.data.template))
    tokenized = tokenize_splits(cfg, splits, tokenizer, task)
    train_ds, train_info = tokenized["train"]
    eval_ds, eval_info = tokenized.get("validation", (None, None))
    print_data_summary([("train", train_info), ("validation", eval_info)], task.renderer.mode)

    model.to(hardware.device())
    metrics: dict = {}
    if eval_ds is not None and cfg.train.zero_shot_eval:
        print("lmtune: zero-shot evaluation on the validation split ...", flush=True)
        metrics["zero_shot"] = task.evaluate(model, eval_ds, cfg.train.eval_batch_size, precision)

    model = method.apply(model, cfg.method, tokenizer)
    trainable, total = trainable_summary(model)
    weights = "4-bit" if method.quantization else str(dtype).removeprefix("torch.")
    print(f"lmtune: {cfg.method.name}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%), "
          f"base weights {weights}, precision {precision}", flush=True)

    trainer = LmtuneTrainer(
        model=model,
        **optimizer_arguments(model, cfg),
        args=training_arguments(cfg, out, precision, eval_ds is not None),
        train_dataset=train_ds.remove_columns(["truncated"]),
        eval_dataset=eval_ds,
        data_collator=task.collator(packing=cfg.data.packing),
        callbacks=[JsonlLogger(out / "log.jsonl")],
        task=task,
        precision=precision,
    )
    result = trainer.train()
    runtime = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics["train"] = {
        "runtime_s": round(runtime, 2),
        "steps": trainer.state.global_step,
        "samples": int(round(result.metrics.get("train_samples_per_second", 0) * runtime)),
        "tokens": tokens,
        "tokens_per_s": round(tokens / runtime, 1) if runtime else 0.0,
        "train_loss": result.metrics.get("train_loss"),
        "peak_memory_mb": round(hardware.peak_memory_mb(), 1),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 6),
        "precision": precision,
    }
    if eval_ds is not None:
        print("lmtune: final evaluation on the validation split ...", flush=True)
        metrics["final"] = task.evaluate(model, eval_ds, cfg.train.eval_batch_size, precision)

    saved = save_model(model, tokenizer, out)
    metrics["saved"] = {"path": str(saved), "size_mb": round(dir_size_mb(saved), 2)}
    metrics["data"] = {name: vars(info) for name, info in (("train", train_info), ("validation", eval_info)) if info}
    write_json_atomic(out / "metrics.json", metrics)
    print_run_summary(metrics, task.metric_for_summary, out)
    return RunResult(metrics, model, tokenizer, out)
