"""Typed run config: YAML -> sections (model, method, data, task, train, output) with defaults.

Unknown keys are rejected with a "did you mean" hint; `key.sub=value` overrides from the command
line are applied before validation; the resolved config is saved beside the run so that it is
enough to reproduce it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmtune.errors import ConfigError


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
        None, description="attention kernel (default: transformers' choice); eager is faster on a CPU for short rows"
    )
    trust_remote_code: bool = False
    keep_layers: Optional[int] = Field(None, gt=0, description="keep only the first N transformer blocks (a smaller student for distillation)")


class FullMethod(Section):
    """Every weight trains."""

    name: Literal["full"] = "full"


class FreezeMethod(Section):
    """Only the last N transformer blocks and/or parameters matching name patterns train."""

    name: Literal["freeze"] = "freeze"
    train_last_layers: int = Field(2, ge=0, description="how many of the last transformer blocks train")
    train_patterns: list[str] = Field(default_factory=list, description="glob patterns of parameter names that train too, e.g. '*norm*', 'lm_head*'")


class LoraMethod(Section):
    """LoRA, DoRA (weight-decomposed) and QLoRA (LoRA on a 4-bit NF4 base)."""

    name: Literal["lora", "dora", "qlora"] = "lora"
    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Union[str, list[str]] = Field("all-linear", description="'all-linear' or module names")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r)")
    lora_plus_ratio: Optional[float] = Field(None, gt=0, description="LoRA+: the B matrices learn this many times faster")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora: 4-bit data type")
    double_quant: bool = Field(True, description="qlora: quantise the quantisation constants too")


class IA3Method(Section):
    """IA3: learned scaling vectors on keys, values and feed-forward activations."""

    name: Literal["ia3"] = "ia3"
    target_modules: Optional[list[str]] = Field(None, description="default: peft's choice for the model family")
    feedforward_modules: Optional[list[str]] = Field(None, description="the target modules that are feed-forward layers")


class PromptTuningMethod(Section):
    """N trainable virtual token embeddings before the input."""

    name: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(20, gt=0)
    init_text: Optional[str] = Field(None, description="initialise the virtual tokens from this text (default: random)")


class PTuningMethod(Section):
    """Virtual tokens produced by a prompt encoder (MLP or LSTM)."""

    name: Literal["p_tuning"] = "p_tuning"
    num_virtual_tokens: int = Field(20, gt=0)
    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_hidden_size: int = Field(128, gt=0)


class PrefixTuningMethod(Section):
    """Trainable key/value prefixes at every layer, reparametrised through an MLP (Prefix-Tuning)."""

    name: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, gt=0)
    encoder_hidden_size: int = Field(512, gt=0)


class PTuningV2Method(Section):
    """Deep prompts at every layer without reparametrisation (P-Tuning v2)."""

    name: Literal["p_tuning_v2"] = "p_tuning_v2"
    num_virtual_tokens: int = Field(20, gt=0)


METHOD_OPTIONS = {m.model_fields["name"].default: m for m in (
    FullMethod, FreezeMethod, IA3Method, PromptTuningMethod, PTuningMethod, PrefixTuningMethod, PTuningV2Method)}
METHOD_OPTIONS.update({name: LoraMethod for name in ("lora", "dora", "qlora")})
MethodConfig = Annotated[
    Union[FullMethod, FreezeMethod, LoraMethod, IA3Method, PromptTuningMethod, PTuningMethod, PrefixTuningMethod, PTuningV2Method],
    Field(discriminator="name"),
]
PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2")
PREFIX_METHODS = ("prefix_tuning", "p_tuning_v2")  # they pass key/value prefixes as a cache


FormatName = Literal["classification", "regression", "tokens", "instruction", "completion", "messages", "sharegpt", "text"]


class MixSource(Section):
    path: str = Field(..., description="a file, directory, glob or hub dataset (owner/name[:split])")
    format: Optional[FormatName] = Field(None, description="default: data.format")
    columns: Optional[dict[str, str]] = Field(None, description="default: data.columns")
    weight: float = Field(1.0, gt=0, description="share of the mixed training set, relative to the other sources")


class DataConfig(Section):
    train: Optional[str] = Field(None, description="training data: a file (jsonl, json, csv, tsv, parquet, txt), a directory, a glob, or a hub dataset owner/name[:split]")
    validation: Optional[str] = Field(None, description="validation data, same kinds as train")
    mix: Optional[list[MixSource]] = Field(None, description="several training sources mixed by weight (instead of train)")
    val_size: Optional[float] = Field(None, gt=0, description="no validation file: carve this fraction (< 1) or count (>= 1) from train")
    format: FormatName = "instruction"
    columns: dict[str, str] = Field(default_factory=dict, description="field -> column name in the file")
    txt_unit: Literal["line", "file"] = Field("line", description=".txt files: one document per line or per file")
    labels: Optional[list[str]] = Field(None, description="label names; int labels index into this list")
    prompt: str = Field("{text}", description="classification: user message made from the row, e.g. 'Review: {text}'")
    system_prompt: Optional[str] = None
    template: Literal["auto", "chat", "plain"] = Field("auto", description="auto: the tokenizer's chat template if any")
    train_on: Literal["all_assistant", "last_assistant"] = Field("all_assistant", description="multi-turn: which assistant turns carry the loss")
    max_length: int = Field(512, gt=1)
    packing: bool = Field(False, description="padding-free batches: rows concatenated, position_ids restart per row")
    streaming: bool = Field(False, description="read the training file lazily (needs train.max_steps)")
    max_samples: Optional[int] = Field(None, gt=0, description="cap on training rows (after a seeded shuffle)")
    max_eval_samples: Optional[int] = Field(None, gt=0)
    on_bad_rows: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _check_sources(self) -> "DataConfig":
        if self.mix and self.train:
            raise ValueError("give data.train or data.mix, not both")
        if self.val_size is not None and self.validation:
            raise ValueError("give data.validation or data.val_size, not both")
        if self.streaming and (self.mix or self.val_size):
            raise ValueError("data.streaming reads one training source in order; it cannot be combined with data.mix or data.val_size")
        formats = {self.format} | {m.format or self.format for m in self.mix or []}
        if "text" in formats and len(formats) > 1:
            raise ValueError("raw text (format: text) cannot be mixed with other formats in one run")
        return self


TASK_FORMATS_NOT_SFT = {"classification": "label_tokens or seq_cls", "regression": "regression", "tokens": "token_cls"}


class TaskConfig(Section):
    name: Literal["sft", "label_tokens", "seq_cls", "regression", "token_cls"] = "sft"
    label_words: Optional[list[str]] = Field(None, description="label_tokens: the word for each label (default: the labels)")
    class_weights: Optional[Union[Literal["balanced"], list[float]]] = Field(
        None, description="seq_cls / token_cls: a weight per label in the loss, or 'balanced' (inverse label frequency in train)")
    loss: Literal["mse", "l1", "huber"] = Field("mse", description="regression: the loss")
    crf: bool = Field(False, description="token_cls: a CRF layer over the tags (pytorch-crf), decoded with Viterbi")


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
    optimizer: Literal["adamw", "adam", "sgd", "adagrad", "adadelta", "rmsprop", "rprop", "adafactor", "adamw_8bit"] = "adamw"
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
    compile: bool = Field(False, description="torch.compile each transformer block: faster steps after about a minute of compiling (long runs)")
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
    num_threads: Optional[int] = Field(None, gt=0, description="torch intra-op threads (default: all cores)")


class OutputConfig(Section):
    dir: str = "runs/lmtune-run"
    overwrite: bool = Field(False, description="allow writing into a non-empty output directory")


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=LoraMethod)
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: Optional[DistillConfig] = None
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_method(cls, raw: Any) -> Any:
        """A method section without a name is LoRA; an unknown name gets the list of methods."""
        if isinstance(raw, dict) and isinstance(raw.get("method"), dict):
            method = raw["method"]
            name = method.get("name", "lora")
            if name not in METHOD_OPTIONS:
                raise ValueError(f"method.name: unknown method {name!r}; known: {', '.join(sorted(METHOD_OPTIONS))}")
            raw = {**raw, "method": {**method, "name": name}}
        return raw

    @model_validator(mode="after")
    def _check_combinations(self) -> "Config":
        name = self.method.name
        if name in PREFIX_METHODS and self.train.gradient_checkpointing:
            raise ValueError(f"method {name} passes its prefixes as a key/value cache, which gradient checkpointing "
                             "cannot recompute; set train.gradient_checkpointing=false or use p_tuning / prompt_tuning / lora")
        if name in PROMPT_METHODS and self.data.packing:
            raise ValueError(f"method {name} puts its virtual tokens before each row, and a packed row holds many "
                             "examples; set data.packing=false or use lora")
        if self.task.name == "label_tokens":
            if self.data.format != "classification":
                raise ValueError("task label_tokens needs data.format: classification")
            if not self.data.labels:
                raise ValueError("task label_tokens needs data.labels (the label names)")
            if self.task.label_words is not None and len(self.task.label_words) != len(self.data.labels):
                raise ValueError("task.label_words needs one word per entry of data.labels")
        if self.task.name == "sft" and self.data.format in TASK_FORMATS_NOT_SFT:
            raise ValueError(f"data.format {self.data.format} goes with task {TASK_FORMATS_NOT_SFT[self.data.format]}, not sft")
        wanted = {"seq_cls": "classification", "regression": "regression", "token_cls": "tokens"}.get(self.task.name)
        if wanted and self.data.format != wanted:
            raise ValueError(f"task {self.task.name} needs data.format: {wanted}")
        if self.task.name in ("seq_cls", "token_cls") and not self.data.labels:
            raise ValueError(f"task {self.task.name} needs data.labels (the {'tag' if self.task.name == 'token_cls' else 'label'} names)")
        if self.task.class_weights and self.task.name not in ("seq_cls", "token_cls"):
            raise ValueError("task.class_weights is for tasks seq_cls and token_cls")
        if isinstance(self.task.class_weights, list) and len(self.task.class_weights) != len(self.data.labels or []):
            raise ValueError("task.class_weights needs one weight per entry of data.labels")
        if self.task.crf and self.task.name != "token_cls":
            raise ValueError("task.crf is for task token_cls")
        if self.distill and self.task.name in ("regression", "token_cls"):
            raise ValueError(f"distill works with tasks label_tokens, sft and seq_cls, not {self.task.name}")
        if self.data.packing and self.task.name in ("seq_cls", "regression", "token_cls"):
            raise ValueError(f"task {self.task.name} predicts per row; set data.packing=false")
        if self.train.nesterov and self.train.momentum <= 0:
            raise ValueError("train.nesterov needs train.momentum > 0")
        if getattr(self.method, "lora_plus_ratio", None) and self.train.optimizer != "adamw":
            raise ValueError("method.lora_plus_ratio builds its own AdamW; leave train.optimizer at adamw")
        self._check_checkpointing()
        if self.data.streaming and self.train.max_steps <= 0:
            raise ValueError("data.streaming needs train.max_steps (the length of a stream is not known)")
        return self

    def _check_checkpointing(self) -> None:
        t = self.train
        has_validation = bool(self.data.validation or self.data.val_size)
        wants_eval = [k for k in ("metric_for_best", "load_best_at_end", "early_stopping_patience") if getattr(t, k)]
        if wants_eval and not (t.eval_steps and has_validation):
            raise ValueError(f"train.{wants_eval[0]} compares evaluations: set train.eval_steps and data.validation (or data.val_size)")
        if t.load_best_at_end and not (t.save_steps and t.save_steps % t.eval_steps == 0):
            raise ValueError("train.load_best_at_end needs checkpoints at evaluation steps: set train.save_steps to a multiple of train.eval_steps")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or start from defaults when path is None) and apply dotted overrides."""
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}".splitlines()[0]) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (model, method, data, ...)")
        # Relative data paths in a config file are relative to the directory the command runs in,
        # as in every example; nothing is rewritten here.
    switch = [parse_override_value(o.split("=", 1)[1]) for o in overrides if o.split("=", 1)[0].strip() == "method.name"]
    if switch and isinstance(raw.get("method"), dict) and raw["method"].get("name", "lora") != switch[-1]:
        # Switching the method on the command line starts the new method from its own defaults:
        # the file's options belong to the method it named (LoRA's r means nothing to full).
        raw["method"] = {}
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`train.lr=1e-4` -> raw["train"]["lr"] = 1e-4 (values parsed as YAML scalars)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = parse_override_value(value)


def parse_override_value(value: str) -> Any:
    """A YAML scalar, or a [list] / {mapping} written in flow style; any other text stays a string
    (so that `data.prompt=Review: {text}` is the prompt, not a mapping)."""
    if value == "":
        return None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, (dict, list)) and not value.lstrip().startswith(("{", "[")):
        return value
    return parsed


def validate_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def _explain(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors()[:3]:
        loc = [str(p) for p in item["loc"]]
        hint_loc = loc
        if loc[:1] == ["method"] and len(loc) > 2 and loc[1] in METHOD_OPTIONS:
            loc = [loc[0]] + loc[2:]  # drop the union tag: method.lora.r -> method.r
        key = ".".join(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            hint = _did_you_mean(hint_loc)
            which = f" for method {hint_loc[1]!r}" if hint_loc is not loc else ""
            lines.append(f"{source}: unknown key {key!r}{which}{hint}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = Config
    if loc[:1] == ["method"] and len(loc) > 2 and loc[1] in METHOD_OPTIONS:
        model, loc = METHOD_OPTIONS[loc[1]], loc[2:]
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    known = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known keys: {', '.join(known)}"


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
