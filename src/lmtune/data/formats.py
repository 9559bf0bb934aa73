"""Row formats -> typed examples (data/examples.py), checked field by field.

A format is a converter registered under its name with the example family it makes: instruction,
completion, messages and sharegpt make Chat examples; text a Document; classification a
LabelledText; regression a ScoredText; tokens TaggedWords. Each converter raises a DataError
naming the file, line and field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from lmtune.data.examples import Chat, Document, LabelledText, ScoredText, TaggedWords
from lmtune.errors import DataError
from lmtune.registry import Registry
from lmtune.sections import DataConfig


@dataclass(frozen=True)
class Format:
    convert: Callable[[dict[str, Any], str, DataConfig], dict]  # (row, location, data config) -> an example
    family: type  # the TypedDict it makes (data/examples.py); a task takes some families (Task.examples)

    def __call__(self, row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
        return self.convert(row, loc, cfg)


FORMATS: Registry[Format] = Registry("data format")


def register_format(name: str, family: type):
    def add(convert):
        FORMATS.register(name)(Format(convert, family))
        return convert

    return add


ROLES = ("system", "user", "assistant", "tool")
# Keys of a turn passed through to the chat template besides role and content (tool calling).
TURN_EXTRAS = ("tool_calls", "name", "tool_call_id")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def column(cfg: DataConfig, field: str) -> str:
    return cfg.columns.get(field, field)


def text_field(row: dict[str, Any], loc: str, cfg: DataConfig, field: str, required: bool = True) -> str:
    name = column(cfg, field)
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            what = "missing" if name not in row else "empty"
            raise DataError(f"{loc}: field {name!r} is {what}; every row needs a non-empty {field}{column_hint(field, name, row)}")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{loc}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def column_hint(field: str, name: str, row: Optional[dict] = None) -> str:
    """How to point lmtune at the file's own name for a field it did not find: the row's fields,
    when the row lacks it, so that a CSV with `review,sentiment` says which names it has."""
    if field != name:  # the user already mapped it: the mapping is what to check
        return ""
    if row is not None and name not in row and row:
        fields = ", ".join(repr(k) for k in list(row)[:8]) + (", ..." if len(row) > 8 else "")
        return f" (the row has {fields}: set data.columns.{field} to the one that holds it)"
    return f" (set data.columns.{field} if the file calls it something else)"


def with_system(messages: list[dict[str, Any]], cfg: DataConfig) -> list[dict[str, Any]]:
    if cfg.system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": cfg.system_prompt}] + messages
    return messages


def fill_prompt(row: dict[str, Any], loc: str, cfg: DataConfig, text: str) -> str:
    """data.prompt with its {placeholders} filled from the row ({text}: the row's text field)."""
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name == "text":
            return text
        value = row.get(column(cfg, name))
        if value is None:
            raise DataError(f"{loc}: data.prompt uses {{{name}}} but the row has no field {column(cfg, name)!r}")
        return str(value)

    return _PLACEHOLDER.sub(fill, cfg.prompt)


@register_format("classification", LabelledText)
def classification(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    text = text_field(row, loc, cfg, "text")
    label = parse_label(row.get(column(cfg, "label")), loc, cfg, row)
    prompt = fill_prompt(row, loc, cfg, text)
    pair = text_field(row, loc, cfg, "text_pair", required=False)
    return LabelledText(text=prompt, pair=pair, label=label, messages=with_system([{"role": "user", "content": prompt}], cfg))


@register_format("regression", ScoredText)
def regression(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """A text (and optionally a second text, text_pair) with a number to predict (label)."""
    text = text_field(row, loc, cfg, "text")
    return ScoredText(text=text, pair=text_field(row, loc, cfg, "text_pair", required=False),
                      label=number_field(row, loc, cfg, "label"))


def number_field(row: dict[str, Any], loc: str, cfg: DataConfig, field: str) -> float:
    """A finite number (CSV cells: a number's text)."""
    name = column(cfg, field)
    value = row.get(name)
    if isinstance(value, str):  # CSV cells are strings
        try:
            value = float(value)
        except ValueError:
            raise DataError(f"{loc}: field {name!r} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        what = "missing" if value is None else f"not a number ({value!r})"
        raise DataError(f"{loc}: field {name!r} is {what}{column_hint(field, name, row)}")
    return float(value)


@register_format("tokens", TaggedWords)
def tokens(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """Token classification: a list of words (tokens) and a tag for each (tags: names from
    data.labels, or their indices), as in CoNLL / WNUT files converted to JSON lines."""
    words_name, tags_name = column(cfg, "tokens"), column(cfg, "tags")
    words, tags = row.get(words_name), row.get(tags_name)
    for name, value, field in ((words_name, words, "tokens"), (tags_name, tags, "tags")):
        if not isinstance(value, list) or not value:
            what = "missing" if value is None else "empty" if value == [] else f"a {type(value).__name__}"
            raise DataError(f"{loc}: field {name!r} is {what}; expected a non-empty list{column_hint(field, name, row)}")
    if len(words) != len(tags):
        raise DataError(f"{loc}: {len(words)} {words_name} but {len(tags)} {tags_name}; every word needs one tag")
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w.strip():
            raise DataError(f"{loc}: {words_name}[{i}] must be a non-empty string")
    names = cfg.labels or []
    ids = []
    for i, t in enumerate(tags):
        if isinstance(t, str) and t in names:
            ids.append(names.index(t))
        elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < len(names):
            ids.append(t)
        else:
            raise DataError(f"{loc}: {tags_name}[{i}] = {t!r} is not one of data.labels {names}")
    return TaggedWords(words=words, tags=ids)


def parse_label(value: Any, loc: str, cfg: DataConfig, row: Optional[dict] = None) -> int:
    name = column(cfg, "label")
    names = cfg.labels or []
    if value is None:
        raise DataError(f"{loc}: field {name!r} is missing{column_hint('label', name, row)}")
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


@register_format("instruction", Chat)
def instruction(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """Alpaca (instruction / input / output); Dolly via columns {input: context, output: response}."""
    prompt = text_field(row, loc, cfg, "instruction")
    extra = text_field(row, loc, cfg, "input", required=False)
    answer = text_field(row, loc, cfg, "output")
    user = f"{prompt}\n\n{extra}" if extra else prompt
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Chat(messages=with_system(messages, cfg), segments=[])


@register_format("completion", Chat)
def completion(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """Plain prompt -> completion text, no chat template; the loss is on the completion (+ EOS)."""
    prompt = text_field(row, loc, cfg, "prompt")
    answer = text_field(row, loc, cfg, "completion")
    return Chat(messages=[], segments=[[prompt, False], [answer, True]])


@register_format("text", Document)
def text(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """A raw document for continued pre-training: the loss is on every token."""
    return Document(text=text_field(row, loc, cfg, "text"))


@register_format("messages", Chat)
def messages(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    name = column(cfg, "messages")

    def turn(t: dict, where: str) -> dict:
        return {"role": t.get("role"), "content": t.get("content"), **{k: t[k] for k in TURN_EXTRAS if t.get(k) is not None}}

    out = _turns(row, loc, name, "role and content", turn)
    return Chat(messages=with_system(check_conversation(out, loc, name), cfg), segments=[])


@register_format("sharegpt", Chat)
def sharegpt(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """`conversations` of {from, value} turns (human / gpt / system / function_call / observation)."""
    name = column(cfg, "conversations")

    def turn(t: dict, where: str) -> dict:
        role = SHAREGPT_ROLES.get(t.get("from"))
        if role is None:
            raise DataError(f"{where}: unknown speaker {t.get('from')!r}; use one of {', '.join(SHAREGPT_ROLES)}")
        return {"role": role, "content": t.get("value")}

    out = _turns(row, loc, name, "from and value", turn)
    if isinstance(row.get("system"), str) and row["system"].strip() and out and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": row["system"]})
    return Chat(messages=with_system(check_conversation(out, loc, name), cfg), segments=[])


def _turns(row: dict[str, Any], loc: str, name: str, fields: str, convert: Callable[[dict, str], dict]) -> list[dict]:
    """The row's list of turns, each checked to be an object and converted to a message."""
    out = []
    for i, t in enumerate(_turn_list(row, loc, name)):
        where = f"{loc}: {name}[{i}]"
        if not isinstance(t, dict):
            raise DataError(f"{where}: expected an object with {fields}")
        out.append(convert(t, where))
    return out


def _turn_list(row: dict[str, Any], loc: str, name: str) -> list:
    turns = row.get(name)
    if isinstance(turns, str):  # CSV / parquet cells may hold the list as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            pass
    if not isinstance(turns, list) or not turns:
        what = "missing" if turns is None else "empty" if turns == [] else f"a {type(turns).__name__}"
        raise DataError(f"{loc}: field {name!r} is {what}; expected a list of turns{column_hint('messages', name, row)}")
    return turns


def check_conversation(turns: list[dict[str, Any]], loc: str, name: str) -> list[dict[str, Any]]:
    seen_user = False
    for i, turn in enumerate(turns):
        where = f"{loc}: {name}[{i}]"
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            said = "has no role" if role is None else f"unknown role {role!r}"
            raise DataError(f"{where}: {said}; use one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise DataError(f"{where}: a system turn may only come first")
        calls_tools = role == "assistant" and turn.get("tool_calls")
        # Every turn says something, but an assistant turn that only calls tools and a tool's result
        # (a tool may return nothing).
        may_be_empty = calls_tools or role == "tool"
        if not isinstance(content, str) or (not may_be_empty and not content.strip()):
            if not (calls_tools and content is None):
                raise DataError(f"{where}: content must be a non-empty string")
            turn["content"] = ""
        if role == "assistant" and not seen_user:
            raise DataError(f"{where}: an assistant turn before any user turn; start with a user turn")
        seen_user = seen_user or role == "user"
    if turns[-1]["role"] != "assistant":
        raise DataError(f"{loc}: the conversation ends on a {turns[-1]['role']} turn; it must end with an assistant turn")
    return turns


from lmtune.data import preference_formats  # noqa: E402,F401  (registers preference and unpaired)
from lmtune.data import pair_formats  # noqa: E402,F401  (registers pairs)
