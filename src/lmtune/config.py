"""Typed run config: YAML -> sections (model, method, data, task, train, output) with defaults.

Unknown keys are rejected with a "did you mean" hint; `key.sub=value` overrides from the command
line are applied before validation; the resolved config is saved beside the run so that it is
enough to reproduce it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional, Union

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


class MethodConfig(Section):
    name: str = Field("lora", description="full | lora")
    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Union[str, list[str]] = Field("all-linear", description="'all-linear' or module names")


FormatName = Literal["classification", "instruction", "completion", "messages", "sharegpt", "text"]


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


class TaskConfig(Section):
    name: Literal["sft", "label_tokens"] = "sft"
    label_words: Optional[list[str]] = Field(None, description="label_tokens: the word for each label (default: the labels)")


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(8, gt=0)
    eval_batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto: bf16 where the hardware has it")
    gradient_checkpointing: bool = False
    group_by_length: bool = Field(True, description="batch rows of similar length together: less padding to compute")
    logging_steps: int = Field(10, gt=0)
    eval_steps: Optional[int] = Field(None, gt=0, description="evaluate every N steps (default: only at the end)")
    save_steps: Optional[int] = Field(None, gt=0, description="checkpoint every N steps (default: none)")
    zero_shot_eval: bool = Field(True, description="measure the task's metrics before training too")
    num_threads: Optional[int] = Field(None, gt=0, description="torch intra-op threads (default: all cores)")


class OutputConfig(Section):
    dir: str = "runs/lmtune-run"
    overwrite: bool = Field(False, description="allow writing into a non-empty output directory")


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> "Config":
        if self.task.name == "label_tokens":
            if self.data.format != "classification":
                raise ValueError("task label_tokens needs data.format: classification")
            if not self.data.labels:
                raise ValueError("task label_tokens needs data.labels (the label names)")
            if self.task.label_words is not None and len(self.task.label_words) != len(self.data.labels):
                raise ValueError("task.label_words needs one word per entry of data.labels")
        if self.task.name == "sft" and self.data.format == "classification":
            raise ValueError("data.format classification goes with task label_tokens, not sft")
        if self.data.streaming and self.train.max_steps <= 0:
            raise ValueError("data.streaming needs train.max_steps (the length of a stream is not known)")
        return self


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
        key = ".".join(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            hint = _did_you_mean(loc)
            lines.append(f"{source}: unknown key {key!r}{hint}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = Config
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
