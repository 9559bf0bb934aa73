"""The new-run form, generated from the typed config: one field per key of every section (the
method's and the task's own keys for the chosen method and task), with its type, default and
description from the same classes that `lmtune config` prints, enums as selects. The form's text
goes back through the CLI's own validation, so the page accepts and refuses exactly what
`lmtune train` would, and the YAML it writes is the one the CLI loads."""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import yaml
from pydantic import ValidationError

from lmtune.config import METHOD_OPTIONS, TASK_OPTIONS, Config, config_problems, parse_override_value
from lmtune.config_help import REGISTRY_VALUES, default_text, sections, type_name
from lmtune.errors import ConfigError

HIDDEN = {"output"}  # the run's name decides where it writes; a new name is never an overwrite
TEXT_OR_NULL = ""  # an empty field is null (or the key's default where null is not allowed)


@dataclass
class FormField:
    key: str  # section.name: the input's name and its label
    choices: Optional[list[str]]  # a select (with "" for null where the key may be null), else a text input
    value: str
    type: str
    default: str
    description: str
    error: str = ""


def choices_of(section: str, name: str, annotation: Any) -> Optional[list[str]]:
    """The allowed values of an enum-like key (a Literal, a bool, or a registry's names)."""
    if (section, name) in REGISTRY_VALUES:
        return list(REGISTRY_VALUES[(section, name)]())
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)  # Optional[X], or "auto" | bool
    choices = [""] if type(None) in typing.get_args(annotation) else []
    for inner in typing.get_args(annotation) if union else (annotation,):
        if inner is bool:
            choices += ["true", "false"]
        elif typing.get_origin(inner) is typing.Literal:
            choices += [str(a) for a in typing.get_args(inner)]
        elif inner is not type(None):
            return None
    return choices


def takes_text(annotation: Any) -> bool:
    """Whether the key holds text as written (a str, possibly optional): such values are not parsed
    as YAML, so that a prompt of '1' or 'yes: {text}' stays what was typed."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 and takes_text(args[0])


def text_of(value: Any) -> str:
    """A config value as the form shows it: lists and mappings in YAML flow style (JSON is valid YAML)."""
    if value is None:
        return TEXT_OR_NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def chosen_classes(method: str, task: str) -> dict[str, type]:
    """section -> the options class the form shows for it."""
    out = {}
    for section, parts in sections().items():
        if section in HIDDEN:
            continue
        if section == "method":
            out[section] = METHOD_OPTIONS.get(method, METHOD_OPTIONS["lora"])
        elif section == "task":
            out[section] = TASK_OPTIONS.get(task, TASK_OPTIONS["sft"])
        else:
            out[section] = parts[0][1]
    return out


def values_of(cfg: Config) -> dict[str, str]:
    """Every key of a loaded config as the form's text."""
    dumped = cfg.model_dump(mode="json")
    values = {}
    for section, cls in chosen_classes(cfg.method.name, cfg.task.name).items():
        for name in cls.model_fields:
            values[f"{section}.{name}"] = text_of((dumped.get(section) or {}).get(name))
    return values


def form_fields(values: Mapping[str, str], errors: Mapping[str, str] = {}) -> list[tuple[str, str, list[FormField]]]:
    """(section, its description, its fields) for the method and task that `values` name."""
    out = []
    classes = chosen_classes(values.get("method.name", "lora"), values.get("task.name", "sft"))
    for section, cls in classes.items():
        fields = []
        for name, info in cls.model_fields.items():
            key = f"{section}.{name}"
            choices = choices_of(section, name, info.annotation)
            registry = (section, name) in REGISTRY_VALUES
            fields.append(FormField(key, choices, values.get(key, ""),
                                    "one of the choices" if registry else type_name(info.annotation),
                                    default_text(info), info.description or "", errors.get(key, "")))
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ") if section in ("distill",) else ""
        out.append((section, doc, fields))
    return out


def raw_from_form(values: Mapping[str, str]) -> dict[str, Any]:
    """The form's text as the raw config the CLI would read from YAML: text keys as typed, the others
    parsed as YAML scalars / flow lists and mappings; empty fields left to their defaults (or null
    where the default is something else and null is allowed). An optional section (distill) is left
    out while its required keys are empty."""
    raw: dict[str, Any] = {}
    classes = chosen_classes(values.get("method.name", "lora"), values.get("task.name", "sft"))
    for section, cls in classes.items():
        part = {}
        for name, info in cls.model_fields.items():
            text = values.get(f"{section}.{name}")
            if text is None:
                continue
            text = text.strip() if not takes_text(info.annotation) else text
            if text == "":
                if info.is_required() or info.default is None:
                    continue  # missing: the default (null), or the required key's own error
                if type(None) in typing.get_args(info.annotation):
                    part[name] = None  # cleared on purpose: null rather than the default
                continue
            part[name] = text if takes_text(info.annotation) and text not in ("null",) else parse_override_value(text)
        if type(None) in typing.get_args(Config.model_fields[section].annotation) and any(
                info.is_required() and not values.get(f"{section}.{name}", "").strip() for name, info in cls.model_fields.items()):
            continue
        raw[section] = part
    return raw


def minimal(cfg: Config) -> dict[str, Any]:
    """The keys whose values differ from the defaults (plus the method and task names): the YAML a
    person would write, which loads to the same config."""
    defaults = Config().model_dump(mode="json")
    method_defaults = METHOD_OPTIONS[cfg.method.name](name=cfg.method.name).model_dump(mode="json")
    task_defaults = TASK_OPTIONS[cfg.task.name](name=cfg.task.name).model_dump(mode="json")
    dumped = cfg.model_dump(mode="json", exclude={"output"})
    out: dict[str, Any] = {}
    for section, values in dumped.items():
        if values is None:
            continue
        base = method_defaults if section == "method" else task_defaults if section == "task" else defaults.get(section) or {}
        changed = {k: v for k, v in values.items() if k == "name" and section in ("method", "task") or base.get(k, object()) != v}
        if changed:
            out[section] = changed
    return out


def check_form(values: Mapping[str, str]) -> tuple[Optional[Config], dict[str, str], list[str]]:
    """(the config, {key: its problem}, problems that belong to no one field). Messages are the CLI's."""
    try:
        return Config.model_validate(raw_from_form(values)), {}, []
    except ValidationError as e:
        by_key, general = {}, []
        known = set(values)
        for key, message in config_problems(e):
            named = key if key in known else next(iter(re.findall(r"\b([a-z_]+\.[a-z_0-9]+)", message)), "")
            if named in known and named not in by_key:
                by_key[named] = message
            else:
                general.append(message)
        return None, by_key, general
    except (ConfigError, ValueError) as e:
        return None, {}, [str(e)]


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(minimal(cfg), sort_keys=False, allow_unicode=True)


def class_defaults(cls) -> dict[str, str]:
    return {name: "" if info.is_required() else text_of(info.get_default(call_default_factory=True))
            for name, info in cls.model_fields.items()}


def switched(values: Mapping[str, str], section: str) -> dict[str, str]:
    """The form after method.name or task.name changed: that section starts from the new choice's own
    defaults (as `lmtune train ... method.name=X` does), the other sections keep what was typed."""
    kept = {k: v for k, v in values.items() if not k.startswith(f"{section}.") or k == f"{section}.name"}
    cls = chosen_classes(values.get("method.name", "lora"), values.get("task.name", "sft"))[section]
    return {**kept, **{f"{section}.{k}": v for k, v in class_defaults(cls).items() if k != "name"}}
