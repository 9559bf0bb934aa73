"""Data for learning from preferences and rewards, as typed examples: two answers to one prompt,
one preferred (`preference`: DPO, ORPO, SimPO), single answers marked good or bad (`unpaired`:
KTO), and prompts alone, whose answers the model writes and reward functions score (`prompts`: GRPO).

`preference` rows are {prompt, chosen, rejected} (column names configurable with data.columns).
Each may be text or a list of chat messages, in three shapes:
- a prompt (text, or a whole conversation) and two answers (text, or assistant message(s));
- no prompt: chosen and rejected are whole conversations sharing a beginning, split at their
  longest common prefix of messages, which becomes the prompt (Anthropic HH-RLHF's files);
- HH-RLHF's own text, "\\n\\nHuman: ... \\n\\nAssistant: ...", read as messages and split the same way.
A row whose answers are equal, empty or missing is a located error.
"""

from __future__ import annotations

import re
from typing import Any

from lmtune.data.examples import Preference, Prompt, Unpaired
from lmtune.data.formats import ROLES, column_hint, check_conversation, column, fill_prompt, register_format, with_system
from lmtune.errors import DataError
from lmtune.sections import DataConfig

HH_TURN = re.compile(r"\n\n(Human|Assistant): ")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(text: str) -> list[dict] | None:
    """An HH-RLHF transcript as messages, or None when the text is not one."""
    if not text.startswith("\n\nHuman: "):
        return None
    parts = HH_TURN.split(text)[1:]  # speaker, text, speaker, text ...
    return [{"role": HH_ROLES[speaker], "content": content.strip()} for speaker, content in zip(parts[::2], parts[1::2])]


def as_messages(value: Any, loc: str, name: str, role: str) -> list[dict]:
    """Text (an HH-RLHF transcript, or one turn of `role`) or a list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{loc}: field {name!r} is empty")
        return hh_messages(value) or [{"role": role, "content": value}]
    if isinstance(value, dict):  # one message
        value = [value]
    if not isinstance(value, list) or not value:
        what = "missing" if value is None else "empty" if value == [] else f"a {type(value).__name__}"
        raise DataError(f"{loc}: field {name!r} is {what}; expected text or a list of messages{column_hint(name, name)}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise DataError(f"{loc}: {name}[{i}]: expected a message with a role ({', '.join(ROLES)}) and content")
        out.append({"role": turn["role"], "content": turn.get("content")})
    return out


def split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(the messages both conversations start with, the rest of chosen, the rest of rejected). When
    they differ only inside the last answer, the prompt is everything before that answer."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] == "assistant":  # an answer starts after a user turn
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def check_answer(answer: list[dict], loc: str, name: str) -> None:
    if not answer:
        raise DataError(f"{loc}: {name} has nothing after the part it shares with the other answer")
    if answer[0]["role"] != "assistant" or answer[-1]["role"] != "assistant":
        raise DataError(f"{loc}: {name} must start and end with an assistant turn after the prompt")
    for i, turn in enumerate(answer):
        if not isinstance(turn.get("content"), str) or not turn["content"].strip():
            raise DataError(f"{loc}: {name}[{i}]: content must be a non-empty string")


@register_format("preference", Preference)
def preference(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    names = {f: column(cfg, f) for f in ("prompt", "chosen", "rejected")}
    for field in ("chosen", "rejected"):
        if row.get(names[field]) is None:
            raise DataError(f"{loc}: field {names[field]!r} is missing; every row needs chosen and rejected"
                            f"{column_hint(field, names[field], row)}")
    chosen = as_messages(row[names["chosen"]], loc, names["chosen"], "assistant")
    rejected = as_messages(row[names["rejected"]], loc, names["rejected"], "assistant")
    if row.get(names["prompt"]) is not None:
        prompt = as_messages(row[names["prompt"]], loc, names["prompt"], "user")
    else:
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
    if not prompt or prompt[-1]["role"] == "assistant":
        raise DataError(f"{loc}: no prompt before the answers; give a {names['prompt']!r} field, or conversations "
                        "that start with the same user turn")
    check_answer(chosen, loc, names["chosen"])
    check_answer(rejected, loc, names["rejected"])
    if chosen == rejected:
        raise DataError(f"{loc}: chosen and rejected are the same answer; a pair needs two different ones")
    check_conversation(prompt + chosen, loc, names["prompt"])
    return Preference(prompt=with_system(prompt, cfg), chosen=chosen, rejected=rejected)


def parse_bool(value: Any, loc: str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise DataError(f"{loc}: field {name!r} must be true (a good answer) or false (a bad one), got {value!r}")


@register_format("unpaired", Unpaired)
def unpaired(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """One answer marked good (label true) or bad (false): {prompt, completion, label}, for KTO."""
    names = {f: column(cfg, f) for f in ("prompt", "completion", "label")}
    for field, name in names.items():
        if row.get(name) is None:
            raise DataError(f"{loc}: field {name!r} is missing{column_hint(field, name, row)}")
    prompt = as_messages(row[names["prompt"]], loc, names["prompt"], "user")
    completion = as_messages(row[names["completion"]], loc, names["completion"], "assistant")
    check_answer(completion, loc, names["completion"])
    check_conversation(prompt + completion, loc, names["prompt"])
    return Unpaired(prompt=with_system(prompt, cfg), completion=completion, label=parse_bool(row[names["label"]], loc, names["label"]))


@register_format("prompts", Prompt)
def prompts(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    """A prompt (text or messages, column `prompt`; without one, data.prompt filled from the row's
    fields, as for classification) and every field of the row, for the reward functions."""
    name = column(cfg, "prompt")
    if row.get(name) is not None:
        prompt = as_messages(row[name], loc, name, "user")
    else:
        text = row.get(column(cfg, "text"))
        prompt = [{"role": "user", "content": fill_prompt(row, loc, cfg, text if isinstance(text, str) else "")}]
        if not prompt[0]["content"].strip():
            raise DataError(f"{loc}: no prompt: the row has no {name!r} field and data.prompt gives an empty text"
                            f"{column_hint('prompt', name)}")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{loc}: the prompt must end with a user turn (the model answers it)")
    check_conversation(prompt + [{"role": "assistant", "content": "."}], loc, name)
    return Prompt(prompt=with_system(prompt, cfg), fields={k: v for k, v in row.items() if k != name})
