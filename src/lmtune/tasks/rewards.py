"""Reward functions for GRPO: built-in ones by name, and the user's own by path.

A reward function takes the prompts and the completions (one entry per completion, as text), the
completions' token ids, and every other field of the rows as keyword arguments (lists, one entry
per completion), and returns a number per completion, or None where it cannot score one:

    def correct_number(prompts, completions, completion_ids, answer, **fields) -> list[float | None]

the same signature as TRL's, so a reward written for TRL works here. `task.rewards` names them:
a built-in name below, `path/to/file.py:function` or `package.module:function`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Callable

from lmtune.errors import ConfigError

RewardFunction = Callable[..., list]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text or "")
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def label_word(cfg) -> RewardFunction:
    """1 when the completion names the row's label (data.labels, or task.label_words) and no other
    label, else 0: classification answered in free text."""
    names = list(cfg.data.labels or [])
    words = [w.lower() for w in (getattr(cfg.task, "label_words", None) or names)]
    if not words:
        raise ConfigError("task.rewards: label_word needs data.labels (the label names)")

    def reward(prompts, completions, label, **fields):
        out = []
        for completion, gold in zip(completions, label):
            index = names.index(gold) if isinstance(gold, str) and gold in names else gold
            said = {w for w in words if re.search(rf"\b{re.escape(w)}\b", completion.lower())}
            out.append(float(isinstance(index, int) and 0 <= index < len(words) and said == {words[index]}))
        return out

    return reward


def number(cfg) -> RewardFunction:
    """1 when the last number of the completion equals the row's answer (the number after "####" in
    GSM8K's answers, or the field itself), else 0."""
    field = cfg.data.columns.get("answer", "answer")

    def reward(prompts, completions, **fields):
        if field not in fields:
            raise ConfigError(f"task.rewards: number reads the field {field!r}, which the rows do not have "
                              "(set data.columns.answer)")
        out = []
        for completion, answer in zip(completions, fields[field]):
            gold = last_number(str(answer).split("####")[-1])
            got = last_number(completion)
            out.append(None if gold is None else float(got is not None and abs(got - gold) < 1e-6))
        return out

    return reward


def brevity(cfg) -> RewardFunction:
    """1 − (completion tokens / task.max_completion_length): shorter answers score higher."""
    limit = cfg.task.max_completion_length

    def reward(prompts, completions, completion_ids, **fields):
        return [1.0 - min(len(ids), limit) / limit for ids in completion_ids]

    return reward


def pattern(cfg) -> RewardFunction:
    """1 when the completion matches task.reward_pattern (a regular expression), else 0: a format reward."""
    if not cfg.task.reward_pattern:
        raise ConfigError("task.rewards: pattern needs task.reward_pattern (a regular expression)")
    regex = re.compile(cfg.task.reward_pattern, re.DOTALL)

    def reward(prompts, completions, **fields):
        return [float(regex.search(c) is not None) for c in completions]

    return reward


BUILT_IN = {"label_word": label_word, "number": number, "brevity": brevity, "pattern": pattern}


def is_reference(name: str) -> bool:
    """A name the config accepts: a built-in, or file.py:function / module:function."""
    return name in BUILT_IN or bool(re.fullmatch(r"[^:]+:[A-Za-z_]\w*", name))


def load_reward(name: str, cfg) -> RewardFunction:
    """The function a task.rewards entry names, ready to call (user code is imported here, once)."""
    if name in BUILT_IN:
        return BUILT_IN[name](cfg)
    source, _, function = name.rpartition(":")
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"task.rewards: {path} not found")
        spec = importlib.util.spec_from_file_location(f"lmtune_rewards_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"task.rewards: importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as e:
            raise ConfigError(f"task.rewards: cannot import {source!r}: {e}") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise ConfigError(f"task.rewards: {source} has no function {function!r}")
    return found
