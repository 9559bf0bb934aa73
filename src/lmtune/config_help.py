"""Every config key with its type, default and meaning, generated from the typed sections: what
`lmtune config [SECTION]` and `lmtune train --help` print, so the help can never drift from the code."""

from __future__ import annotations

import typing
from typing import Any, Optional

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lmtune.config import METHOD_OPTIONS, TASK_OPTIONS, Config
from lmtune.data.formats import FORMATS
from lmtune.errors import ConfigError

# Keys whose allowed values come from a registry rather than the type.
REGISTRY_VALUES = {("data", "format"): lambda: FORMATS.names(), ("method", "name"): lambda: list(METHOD_OPTIONS),
                   ("task", "name"): lambda: list(TASK_OPTIONS)}


def type_name(annotation: Any) -> str:
    """A short readable type: int, float, list[str], one of a | b, ... (None: optional)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(parts) + (" | null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list[{', '.join(type_name(a) for a in args)}]"
    if origin is dict:
        return f"mapping[{', '.join(type_name(a) for a in args)}]"
    if origin is typing.Annotated:
        return type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "[]" if value == [] else "{}" if value == {} else "(section)"
    if field.default is PydanticUndefined:
        return "(required)"
    return "null" if field.default is None else str(field.default).lower() if isinstance(field.default, bool) else str(field.default)


def fields_of(model: type[BaseModel], section: str) -> list[dict]:
    """(key, type, default, description) of each field of a section."""
    rows = []
    for name, field in model.model_fields.items():
        values = REGISTRY_VALUES.get((section, name))
        rows.append({"key": f"{section}.{name}", "type": " | ".join(values()) if values else type_name(field.annotation),
                     "default": default_text(field), "description": field.description or ""})
    return rows


def sections() -> dict[str, list[tuple[str, type[BaseModel]]]]:
    """section -> [(a heading, its options class)]: one class for plain sections, one per method or task."""
    out: dict[str, list[tuple[str, type[BaseModel]]]] = {}
    for name, field in Config.model_fields.items():
        if name == "method":
            out[name] = [(f"method.name: {'/'.join(n for n, c in METHOD_OPTIONS.items() if c is cls)}", cls)
                         for cls in dict.fromkeys(METHOD_OPTIONS.values())]
        elif name == "task":
            out[name] = [(f"task.name: {n}", cls) for n, cls in TASK_OPTIONS.items()]
        else:
            model = typing.get_args(field.annotation)[0] if typing.get_origin(field.annotation) else field.annotation
            out[name] = [(name, model)]
    return out


def describe(section: Optional[str] = None) -> str:
    """The keys of one section (or all of them) as text, a block per section / method / task."""
    known = sections()
    if section is not None and section not in known:
        raise ConfigError(f"unknown config section {section!r}; sections: {', '.join(known)}")
    lines = []
    for name, parts in known.items():
        if section is not None and name != section:
            continue
        for heading, model in parts:
            doc = (model.__doc__ or "").strip().splitlines()
            lines.append(f"{heading}" + (f"  ({doc[0]})" if doc and heading != name else ""))
            for row in fields_of(model, name):
                if row["key"].endswith(".name") and name in ("method", "task"):
                    continue
                lines.append(f"  {row['key']}: {row['type']} = {row['default']}")
                if row["description"]:
                    lines.append(f"      {row['description']}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
