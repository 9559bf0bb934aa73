"""The typed examples that row formats produce, one TypedDict per family of formats. A task says
which families it takes (Task.examples); a format says which family it makes (data/formats.py).
Every example of a split is of one family, so a datasets.Dataset holds them as columns: the keys
of the family, lists stored as JSON text (tool calls with arbitrary arguments would not fit one
Arrow schema). They are plain dicts at run time: JSON-serialisable, cheap, and typed for readers."""

from __future__ import annotations

import json
from typing import Any, TypedDict


class Chat(TypedDict):
    """A conversation (instruction, messages, sharegpt), or raw prompt / answer pieces that bypass
    the chat template (completion): [text, is_target] segments."""

    messages: list[dict]
    segments: list[list]


class Document(TypedDict):
    """Raw text for continued pre-training: the loss is on every token."""

    text: str


class LabelledText(TypedDict):
    """A text (and an optional second text of a pair, "" when none) with a class index. `messages`
    is the text as a chat prompt (data.prompt, data.system_prompt) for classification by label words."""

    text: str
    pair: str
    label: int
    messages: list[dict]


class ScoredText(TypedDict):
    """A text (and an optional second text) with a number to predict."""

    text: str
    pair: str
    label: float


class TaggedWords(TypedDict):
    """Words and a tag index for each (token classification)."""

    words: list[str]
    tags: list[int]


class Preference(TypedDict):
    """A prompt (messages) and two answers to it (assistant messages), the first one preferred."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]


class Unpaired(TypedDict):
    """A prompt and one answer, marked good (True) or bad (False): KTO's data."""

    prompt: list[dict]
    completion: list[dict]
    label: bool


class Prompt(TypedDict):
    """A prompt alone (the model writes the answers: GRPO), with the row's other fields, which
    reward functions read (the right label, the expected number ...)."""

    prompt: list[dict]
    fields: dict


class SentencePair(TypedDict):
    """Two texts for a bi-encoder: a gold similarity score (None for an anchor and its positive),
    and optionally a third text unlike the first (a hard negative, "" when none)."""

    anchor: str
    positive: str
    negative: str
    score: float | None


# Every family; a new one is a TypedDict above and its name here.
FAMILIES: tuple[type, ...] = (Chat, Document, LabelledText, ScoredText, TaggedWords, Preference, Unpaired, Prompt,
                              SentencePair)
# Stored as JSON text in a datasets row.
JSON_FIELDS = ("messages", "segments", "words", "tags", "prompt", "chosen", "rejected", "completion", "fields")


def columns(family: type) -> list[str]:
    return list(family.__annotations__)


def family_of(keys) -> type:
    """The family whose keys are exactly these (an example, a row or a batch's columns)."""
    wanted = set(keys)
    for family in FAMILIES:
        if set(columns(family)) == wanted:
            return family
    raise ValueError(f"no example family has the keys {sorted(wanted)}")


def to_row(example: dict[str, Any]) -> dict[str, Any]:
    """Storage form for a datasets.Dataset."""
    return {k: json.dumps(v) if k in JSON_FIELDS else v for k, v in example.items()}


def from_batch(batch: dict[str, list]) -> list[dict[str, Any]]:
    """The examples of a batched datasets.map call over rows made by to_row."""
    keys = list(batch)
    return [{k: json.loads(v) if k in JSON_FIELDS else v for k, v in zip(keys, values)} for values in zip(*batch.values())]
