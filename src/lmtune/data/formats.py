"""Row formats -> one normal form: a list of chat messages (and a label index for classification).

Each converter checks its row and raises a DataError naming the file, line and field.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from lmtune.config import DataConfig
from lmtune.errors import DataError
from lmtune.registry import Registry

Example = dict[str, Any]  # {"messages": [{"role", "content"}, ...], "label": int (-1 when none)}
Converter = Callable[[dict[str, Any], str, DataConfig], Example]

FORMATS: Registry[Converter] = Registry("data format")
ROLES = ("system", "user", "assistant")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def column(cfg: DataConfig, field: str) -> str:
    return cfg.columns.get(field, field)


def text_field(row: dict[str, Any], loc: str, cfg: DataConfig, field: str, required: bool = True) -> str:
    name = column(cfg, field)
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            what = "missing" if name not in row else "empty"
            raise DataError(f"{loc}: field {name!r} is {what}; every row needs a non-empty {field} text{_mapping_hint(field, name)}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{loc}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _mapping_hint(field: str, name: str) -> str:
    return f" (set data.columns.{field} if the file calls it something else)" if field == name else ""


def with_system(messages: list[dict[str, str]], cfg: DataConfig) -> list[dict[str, str]]:
    if cfg.system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": cfg.system_prompt}] + messages
    return messages


@FORMATS.register("classification")
def classification(row: dict[str, Any], loc: str, cfg: DataConfig) -> Example:
    text = text_field(row, loc, cfg, "text")
    label = parse_label(row.get(column(cfg, "label")), loc, cfg)

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name == "text":
            return text
        value = row.get(column(cfg, name))
        if value is None:
            raise DataError(f"{loc}: data.prompt uses {{{name}}} but the row has no field {column(cfg, name)!r}")
        return str(value)

    prompt = _PLACEHOLDER.sub(fill, cfg.prompt)
    return {"messages": with_system([{"role": "user", "content": prompt}], cfg), "label": label}


def parse_label(value: Any, loc: str, cfg: DataConfig) -> int:
    name = column(cfg, "label")
    names = cfg.labels or []
    if value is None:
        raise DataError(f"{loc}: field {name!r} is missing{_mapping_hint('label', name)}")
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        if value.strip().lstrip("-").isdigit():  # CSV cells are strings
            value = int(value)
        else:
            raise DataError(f"{loc}: unknown label {value!r}; data.labels is {names}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{loc}: field {name!r} must be an int or a label name, got {type(value).__name__}")
    if not 0 <= value < len(names):
        raise DataError(f"{loc}: label {value} is out of range; data.labels has {len(names)} names {names}")
    return value


@FORMATS.register("instruction")
def instruction(row: dict[str, Any], loc: str, cfg: DataConfig) -> Example:
    """Alpaca (instruction / input / output); Dolly via columns {input: context, output: response}."""
    prompt = text_field(row, loc, cfg, "instruction")
    extra = text_field(row, loc, cfg, "input", required=False)
    answer = text_field(row, loc, cfg, "output")
    user = f"{prompt}\n\n{extra}" if extra else prompt
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": with_system(messages, cfg), "label": -1}


@FORMATS.register("messages")
def messages(row: dict[str, Any], loc: str, cfg: DataConfig) -> Example:
    name = column(cfg, "messages")
    turns = row.get(name)
    if not isinstance(turns, list) or not turns:
        what = "missing" if turns is None else "empty" if turns == [] else f"a {type(turns).__name__}"
        raise DataError(f"{loc}: field {name!r} is {what}; expected a list of {{role, content}} turns")
    out = []
    for i, turn in enumerate(turns):
        where = f"{loc}: {name}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: expected an object with role and content")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise DataError(f"{where}: a system turn may only come first")
        if not isinstance(content, str) or (role == "assistant" and not content.strip()):
            raise DataError(f"{where}: content must be a non-empty string")
        if role == "assistant" and not any(t["role"] == "user" for t in out):
            raise DataError(f"{where}: an assistant turn before any user turn; start with a user turn")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{loc}: the conversation ends on a {out[-1]['role']} turn; it must end with an assistant turn")
    return {"messages": with_system(out, cfg), "label": -1}
