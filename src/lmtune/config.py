"""The whole run config: the shared sections (sections.py) with the method section and the task
section that each method and task module declares, checked as one, from YAML plus `key.sub=value`
overrides. Unknown keys are rejected with a "did you mean" hint; the resolved config is saved beside
the run so that it is enough to reproduce it."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from lmtune.data.formats import FORMATS
from lmtune.errors import ConfigError
from lmtune.methods import METHODS
from lmtune.sections import DataConfig, DistillConfig, ModelConfig, OutputConfig, Section, TrainConfig
from lmtune.tasks import TASKS

# The method and task option classes, re-exported for callers that build sections by hand.
from lmtune.methods.full import FullMethod  # noqa: F401
from lmtune.methods.freeze import FreezeMethod  # noqa: F401
from lmtune.methods.ia3 import IA3Method  # noqa: F401
from lmtune.methods.lora import LoraMethod  # noqa: F401
from lmtune.methods.p_tuning import PTuningMethod  # noqa: F401
from lmtune.methods.p_tuning_v2 import PTuningV2Method  # noqa: F401
from lmtune.methods.prefix_tuning import PrefixTuningMethod  # noqa: F401
from lmtune.methods.prompt_tuning import PromptTuningMethod  # noqa: F401

# name -> options class, from the registries: a new method or task appears here by registering.
METHOD_OPTIONS = {name: METHODS.get(name).options for name in METHODS.in_order()}
TASK_OPTIONS = {name: TASKS.get(name).Options for name in TASKS.in_order()}
DEFAULT_METHOD, DEFAULT_TASK = "lora", "sft"


def tagged_union(options: dict[str, type]):
    classes = list(dict.fromkeys(options.values()))  # lora, dora and qlora share one class
    return Annotated[Union[tuple(classes)], Field(discriminator="name")]


MethodConfig = tagged_union(METHOD_OPTIONS)
TaskConfig = tagged_union(TASK_OPTIONS)


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=METHOD_OPTIONS[DEFAULT_METHOD])
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TASK_OPTIONS[DEFAULT_TASK])
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: Optional[DistillConfig] = None
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, raw: Any) -> Any:
        """A method section without a name is LoRA, a task section without one SFT; an unknown name
        gets the list of known ones."""
        if not isinstance(raw, dict):
            return raw
        for section, known, default in (("method", METHOD_OPTIONS, DEFAULT_METHOD), ("task", TASK_OPTIONS, DEFAULT_TASK)):
            if isinstance(raw.get(section), dict):
                name = raw[section].get("name", default)
                if name not in known:
                    raise ValueError(f"{section}.name: unknown {section} {name!r}; known: {', '.join(sorted(known))}")
                raw = {**raw, section: {**raw[section], "name": name}}
        return raw

    @model_validator(mode="after")
    def _check_combinations(self) -> "Config":
        for fmt in sorted(self.data.formats()):
            if fmt not in FORMATS:
                raise ValueError(f"data.format: unknown format {fmt!r}; known: {', '.join(FORMATS.names())}")
        kinds = {fmt: FORMATS.get(fmt).family.__name__ for fmt in sorted(self.data.formats())}
        if len(set(kinds.values())) > 1:  # one split holds examples of one kind
            raise ValueError("data.mix: formats that make different kinds of example cannot be mixed in one run ("
                             + ", ".join(f"{f}: {k}" for f, k in kinds.items()) + ")")
        method = METHODS.get(self.method.name)
        if method.virtual_tokens == "cache" and self.train.gradient_checkpointing:
            raise ValueError(f"method {method.name} passes its prefixes as a key/value cache, which gradient checkpointing "
                             "cannot recompute; set train.gradient_checkpointing=false or use p_tuning / prompt_tuning / lora")
        if method.virtual_tokens != "none" and self.data.packing:
            raise ValueError(f"method {method.name} puts its virtual tokens before each row, and a packed row holds many "
                             "examples; set data.packing=false or use lora")
        if method.check:
            method.check(self)
        TASKS.get(self.task.name).check(self)
        if self.train.nesterov and self.train.momentum <= 0:
            raise ValueError("train.nesterov needs train.momentum > 0")
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
            raw = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}  # -sig: a byte-order mark is not a key
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not a text file (byte {e.start} is not UTF-8); a config is a YAML text file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}".splitlines()[0]) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (model, method, data, ...)")
        # Relative data paths in a config file are relative to the directory the command runs in,
        # as in every example; nothing is rewritten here.
    for section, default in (("method", DEFAULT_METHOD), ("task", DEFAULT_TASK)):
        switch = [parse_override_value(o.split("=", 1)[1]) for o in overrides if o.split("=", 1)[0].strip() == f"{section}.name"]
        if switch and isinstance(raw.get(section), dict) and raw[section].get("name", default) != switch[-1]:
            # Switching the method (or task) on the command line starts it from its own defaults: the
            # file's options belong to the one it named (LoRA's r means nothing to full).
            raw[section] = {}
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


UNIONS = {"method": METHOD_OPTIONS, "task": TASK_OPTIONS}  # sections whose keys depend on their name


def _explain(err: ValidationError, source: str) -> str:
    return "\n".join(f"{source}: {message}" for _, message in config_problems(err))


def config_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(the key as a user writes it, e.g. method.r, or "" for the whole config; the message) for the
    first three problems: the CLI prints them, the web UI shows each beside its field."""
    problems = []
    for item in err.errors()[:3]:
        loc = [str(p) for p in item["loc"]]
        tag = loc[1] if loc and loc[0] in UNIONS and len(loc) > 2 and loc[1] in UNIONS[loc[0]] else None
        shown = [loc[0]] + loc[2:] if tag else loc  # drop the union tag: method.lora.r -> method.r
        key = ".".join(shown)
        if item["type"] == "extra_forbidden":
            problems.append((key, _unknown_key(loc, shown, tag)))
        else:
            msg = item["msg"].removeprefix("Value error, ")
            problems.append((key, f"{key}: {msg}" if loc else msg))
    return problems


def _unknown_key(loc: list[str], shown: list[str], tag: str | None) -> str:
    key = ".".join(shown)
    if tag and loc[0] == "task":
        owners = [t for t, options in TASK_OPTIONS.items() if loc[-1] in options.model_fields]
        if owners:
            plural = "s" if len(owners) > 1 else ""
            return f"{key} is for task{plural} {' and '.join(owners)}, not {tag}"
    which = f" for {loc[0]} {tag!r}" if tag else ""
    return f"unknown key {key!r}{which}{_did_you_mean(loc, tag)}"


def _did_you_mean(loc: list[str], tag: str | None) -> str:
    model: type[BaseModel] = Config
    if tag:
        model, loc = UNIONS[loc[0]][tag], loc[2:]
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
