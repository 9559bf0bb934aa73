"""The Hugging Face TrainingArguments and optimizer built from lmtune's train section."""

from __future__ import annotations

from pathlib import Path

import torch

from lmtune.config import Config
from lmtune.optimizers import optimizer_cls_and_kwargs

# Metrics where a smaller value is the better model (the rest: larger is better).
LOWER_IS_BETTER = ("loss", "perplexity", "rmse", "mse", "mae")


def best_metric(cfg: Config) -> str | None:
    """The validation metric that picks the best checkpoint, when anything needs one."""
    t = cfg.train
    if t.metric_for_best or t.load_best_at_end or t.early_stopping_patience:
        return t.metric_for_best or "loss"
    return None


def training_arguments(cfg: Config, out: Path, precision: str, has_eval: bool):
    from transformers import TrainingArguments

    t = cfg.train
    metric = best_metric(cfg)
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
        # Without save_steps a checkpoint is still written when Ctrl-C / SIGTERM stops the run (StopOnSignal).
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        metric_for_best_model=f"eval_{metric}" if metric else None,
        greater_is_better=metric not in LOWER_IS_BETTER if metric else None,
        load_best_model_at_end=t.load_best_at_end,
        # TensorBoard gets its own callback (run.py) so that its files land in the run directory.
        report_to=[r for r in t.report_to if r != "tensorboard"] or "none",
        fsdp=t.fsdp or "",
        fsdp_config=t.fsdp_config,
        deepspeed=t.deepspeed,
        remove_unused_columns=False,  # the collator picks its own columns
        dataloader_num_workers=0,  # data is tokenised up front; workers would only compete for cores
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
    )


def optimizer_arguments(model, cfg: Config) -> dict:
    """Trainer keyword arguments for the optimizer: LoRA+'s own, or train.optimizer by name."""
    lora_plus = lora_plus_optimizer(model, cfg)
    if lora_plus is not None:
        return {"optimizers": (lora_plus, None)}
    return {"optimizer_cls_and_kwargs": optimizer_cls_and_kwargs(cfg.train)}


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
