"""Sentence pairs for a bi-encoder (task embedding), in two shapes, column names configurable:

- `{sentence1, sentence2, score}`: a gold similarity in data.score_range (STS-B: 0-5), for the
  cosine loss; a score outside the range is a located error, as is a scored row without a range;
- `{anchor, positive[, negative]}`: a text, one that means the same, and optionally a hard
  negative, for the contrastive loss (the other rows of the batch are negatives too).
"""

from __future__ import annotations

from typing import Any

from lmtune.data.examples import SentencePair
from lmtune.data.formats import column, number_field, register_format, text_field
from lmtune.errors import DataError
from lmtune.sections import DataConfig


@register_format("pairs", SentencePair)
def pairs(row: dict[str, Any], loc: str, cfg: DataConfig) -> dict:
    if column(cfg, "anchor") not in row and column(cfg, "sentence1") not in row:
        raise DataError(f"{loc}: a pairs row has sentence1, sentence2 and score, or anchor and positive (and negative); "
                        f"this one has {', '.join(map(repr, row)) or 'no fields'} (set data.columns to map yours)")
    if column(cfg, "anchor") in row:
        return SentencePair(anchor=text_field(row, loc, cfg, "anchor"), positive=text_field(row, loc, cfg, "positive"),
                            negative=text_field(row, loc, cfg, "negative", required=False), score=None)
    return SentencePair(anchor=text_field(row, loc, cfg, "sentence1"), positive=text_field(row, loc, cfg, "sentence2"),
                        negative="", score=gold_score(row, loc, cfg))


def gold_score(row: dict[str, Any], loc: str, cfg: DataConfig) -> float:
    value = number_field(row, loc, cfg, "score")
    if cfg.score_range is None:
        raise DataError(f"{loc}: scored pairs need data.score_range: [low, high] (STS-B: [0, 5]), the range the "
                        "cosine loss scales the scores from")
    low, high = cfg.score_range
    if not low <= value <= high:
        raise DataError(f"{loc}: field {column(cfg, 'score')!r} is {value:g}, outside data.score_range [{low:g}, {high:g}]")
    return value
