"""The config sections every run has (model, data, train, output, distill), typed, with defaults
and a description per key. The method and task sections are declared by each method and task
module (methods/*.py, tasks/*.py) and put together with these in config.py."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmtune.optimizers import OPTIMIZERS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("smollm2-135m-instruct", description="built-in alias, local directory, GGUF file or hub id")
    gguf_file: Optional[str] = Field(None, description="GGUF file name inside `name` when it is a directory or repo")
    revision: Optional[str] = None
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype of the loaded weights; auto: bf16 for frozen bases under bf16, else fp32"
    )
    attn_implementation: Optional[Literal["eager", "sdpa", "flash_attention_2"]] = Field(
        None, description="attention kernel; default: lmtune's chunked attention on a CPU where it applies, else transformers' choice"
    )
    trust_remote_code: bool = False
    keep_layers: Optional[int] = Field(None, gt=0, description="keep only the first N transformer blocks (a smaller student for distillation)")


class MixSource(Section):
    path: str = Field(..., description="a file, directory, glob or hub dataset (owner/name[:split])")
    format: Optional[str] = Field(None, description="default: data.format")
    columns: Optional[dict[str, str]] = Field(None, description="default: data.columns")
    weight: float = Field(1.0, gt=0, description="share of the mixed training set, relative to the other sources")


class DataConfig(Section):
    train: Optional[str] = Field(None, description="training data: a file (jsonl, json, csv, tsv, parquet, txt), a directory, a glob, or a hub dataset owner/name[:split]")
    validation: Optional[str] = Field(None, description="validation data, same kinds as train")
    mix: Optional[list[MixSource]] = Field(None, description="several training sources mixed by weight (instead of train)")
    val_size: Optional[float] = Field(None, gt=0, description="no validation file: carve this fraction (< 1) or count (>= 1) from train")
    format: str = Field("instruction", description="the row format (lmtune config data lists them)")
    columns: dict[str, str] = Field(default_factory=dict, description="field -> column name in the file")
    txt_unit: Literal["line", "file"] = Field("line", description=".txt files: one document per line or per file")
    labels: Optional[list[str]] = Field(None, description="label names; int labels index into this list")
    prompt: str = Field("{text}", description="classification: user message made from the row, e.g. 'Review: {text}'")
    system_prompt: Optional[str] = None
    template: Literal["auto", "chat", "plain", "eos_separated"] = Field(
        "auto", description="auto: the tokenizer's chat template if any; plain: ### Instruction / ### Response headers; "
                            "eos_separated: the texts as they are, the EOS token after the prompt and after the answer")
    train_on: Literal["all_assistant", "last_assistant"] = Field("all_assistant", description="multi-turn: which assistant turns carry the loss")
    max_length: int = Field(512, gt=1)
    packing: bool = Field(False, description="padding-free batches: rows concatenated, position_ids restart per row")
    streaming: bool = Field(False, description="read the training file lazily (needs train.max_steps)")
    max_samples: Optional[int] = Field(None, gt=0, description="cap on training rows (after a seeded shuffle)")
    max_eval_samples: Optional[int] = Field(None, gt=0)
    on_bad_rows: Literal["error", "skip"] = "error"
    score_range: Optional[tuple[float, float]] = Field(None, description="pairs: the gold scores' range, e.g. [0, 5] for STS-B "
                                                       "(scaled to [0, 1] for the cosine loss); a score outside it is an error")

    @model_validator(mode="after")
    def _check_sources(self) -> "DataConfig":
        if self.mix and self.train:
            raise ValueError("give data.train or data.mix, not both")
        if self.val_size is not None and self.validation:
            raise ValueError("give data.validation or data.val_size, not both")
        if self.score_range is not None and not self.score_range[0] < self.score_range[1]:
            raise ValueError("data.score_range: [low, high] with low < high")
        if self.streaming and (self.mix or self.val_size):
            raise ValueError("data.streaming reads one training source in order; it cannot be combined with data.mix or data.val_size")
        return self

    def formats(self) -> set[str]:
        """Every row format this run reads (data.format, and each mixed source's own)."""
        return {self.format} | {m.format or self.format for m in self.mix or []}


class DistillConfig(Section):
    """Knowledge distillation: the student (this run's model and method) also learns the teacher's
    output distribution on the positions the task trains on."""

    teacher: str = Field(description="the teacher: a model (alias, directory, hub id) or an lmtune run directory")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the task loss; 1 - alpha goes to the teacher's")
    temperature: float = Field(2.0, gt=0, description="softens both distributions; the KL term is scaled by T^2")
    teacher_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: the run's 16-bit precision")


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(8, gt=0)
    eval_batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(2e-4, gt=0)
    optimizer: Literal[tuple(OPTIMIZERS)] = Field("adamw", description="the optimizer (optimizers.py)")
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, description="sgd / rmsprop momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    scheduler: Literal["linear", "cosine", "cosine_with_restarts", "constant", "constant_with_warmup", "polynomial",
                       "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"] = "linear"
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping by global norm (0: none)")
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 where the hardware has it")
    gradient_checkpointing: bool = False
    compile: Union[Literal["auto"], bool] = Field(
        "auto", description="torch.compile each transformer block. auto: part-way into a plain-LoRA run on a CPU, when its first "
        "steps show that the steps left win the compile time back; true: from the first step; false: never")
    neftune_noise_alpha: Optional[float] = Field(None, gt=0, description="NEFTune: noise on the input embeddings while training (SFT; 5 is usual)")
    group_by_length: bool = Field(True, description="batch rows of similar length together: less padding to compute")
    logging_steps: int = Field(10, gt=0)
    eval_steps: Optional[int] = Field(None, gt=0, description="evaluate every N steps (default: only at the end)")
    save_steps: Optional[int] = Field(None, gt=0, description="checkpoint every N steps (default: none)")
    save_total_limit: Optional[int] = Field(None, gt=0, description="keep only the newest N checkpoints (and the best one)")
    metric_for_best: Optional[str] = Field(None, description="validation metric that picks the best checkpoint and drives early stopping (default: loss)")
    load_best_at_end: bool = Field(False, description="end the run with the best checkpoint's weights (needs save_steps and eval_steps)")
    early_stopping_patience: Optional[int] = Field(None, gt=0, description="stop after this many evaluations without improvement (needs eval_steps)")
    early_stopping_threshold: float = Field(0.0, ge=0, description="the smallest change that counts as an improvement")
    on_nan: Literal["stop", "skip"] = Field("stop", description="a nan/inf loss stops the run (stop) or its micro-batch is dropped (skip)")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list, description="also log to these trackers")
    fsdp: Optional[str] = Field(None, description="passed to the Trainer under torchrun/accelerate, e.g. 'full_shard auto_wrap'")
    fsdp_config: Optional[dict[str, Any]] = Field(None, description="the Trainer's fsdp_config")
    deepspeed: Optional[str] = Field(None, description="a DeepSpeed JSON config file (ZeRO), passed to the Trainer")
    zero_shot_eval: bool = Field(True, description="measure the task's metrics before training too")
    bench_after: list[str] = Field(default_factory=list, description="benchmarks (lm-evaluation-harness tasks such as mmlu, gsm8k) "
                                   "run on the saved model when training ends; results in metrics.json and RUN_DIR/bench/")
    bench_limit: Optional[int] = Field(None, gt=0, description="bench_after: at most this many questions per task (per subject for MMLU)")
    num_threads: Optional[int] = Field(None, gt=0, description="torch intra-op threads (default: all cores)")


class OutputConfig(Section):
    dir: str = "runs/lmtune-run"
    overwrite: bool = Field(False, description="allow writing into a non-empty output directory")


