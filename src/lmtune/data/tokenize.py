"""Segments -> token ids and labels (-100 except on target tokens), and truncation.

This is the one place where the loss mask is made.
"""

from __future__ import annotations

from lmtune.data.templates import Renderer, Segment

IGNORE = -100
# Per row: whether it was cut to data.max_length. Counted for the summary, never fed to the model.
TRUNCATED = "truncated"


def labels_per_token(labels: list) -> list[list]:
    """A labels column as lists: a head task's one label per row counts as one target (its text is the input)."""
    return [l if isinstance(l, list) else [l] for l in labels]


def count_targets(labels: list) -> int:
    """Tokens (or rows, for head tasks) with a loss in a labels column."""
    return sum(sum(l != IGNORE for l in row) for row in labels_per_token(labels))


def bos_prefix(tokenizer, renderer: Renderer) -> list[int]:
    """The BOS id for plain templates when the tokenizer normally adds one (chat templates write it)."""
    if renderer.mode != "plain" or tokenizer.bos_token_id is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [tokenizer.bos_token_id] if ids and ids[0] == tokenizer.bos_token_id else []


def tokenize_segments(tokenizer, renderer: Renderer, batch: list[list[Segment]]) -> list[tuple[list[int], list[int]]]:
    """Tokenise every segment of every example in one tokenizer call; return (input_ids, labels)."""
    flat = [text for segments in batch for text, _ in segments]
    ids_per_segment = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    prefix = bos_prefix(tokenizer, renderer)
    out, k = [], 0
    for segments in batch:
        ids, labels = list(prefix), [IGNORE] * len(prefix)
        for _, is_target in segments:
            seg = ids_per_segment[k]
            k += 1
            ids += seg
            labels += seg if is_target else [IGNORE] * len(seg)
        out.append((ids, labels))
    return out


def truncate(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Fit into max_length, keeping the last target: cut the prompt from the left first, and the
    target from the right only if it alone is too long. At least one token is kept before the
    target so that its first token is still predicted. Returns (ids, labels, was_truncated)."""
    over = len(ids) - max_length
    if over <= 0:
        return ids, labels, False
    start = last_target_start(labels)
    cut_left = max(0, min(over, start - 1))
    ids, labels = ids[cut_left:], labels[cut_left:]
    return ids[:max_length], labels[:max_length], True


def last_target_start(labels: list[int]) -> int:
    """Index where the last run of target tokens begins (len(labels) when there is none)."""
    i = len(labels)
    while i > 0 and labels[i - 1] == IGNORE:
        i -= 1
    while i > 0 and labels[i - 1] != IGNORE:
        i -= 1
    return i if any(l != IGNORE for l in labels) else len(labels)


def text_budget(tokenizer, max_length: int) -> int:
    """Characters that hold more than max_length tokens of any text: max_length times the longest
    token of the vocabulary, twice over (the margin keeps the cut away from the tokens that are
    kept). A text longer than this is cut before tokenising: a 50 MB row costs what max_length
    tokens cost, and the tokens kept are the same as when the whole text is tokenised and truncated."""
    longest = getattr(tokenizer, "_lmtune_longest_token", None)
    if longest is None:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=16)
        tokenizer._lmtune_longest_token = longest
    return 2 * max_length * max(longest, 1)


def clip_text(text: str, budget: int, keep: str) -> str:
    """At most `budget` characters of a text: its start (keep="start") or its end (keep="end")."""
    if len(text) <= budget:
        return text
    return text[:budget] if keep == "start" else text[-budget:]


def clip_chat(example: dict, budget: int) -> dict:
    """A Chat example (or a LabelledText's prompt messages) with over-long turns cut as truncation
    will cut them: the last answer keeps its start (it is the target kept), every other turn its end
    (the prompt is cut from the left)."""
    if example.get("segments"):
        last = len(example["segments"]) - 1
        segments = [[clip_text(text, budget, "start" if i == last else "end"), target]
                    for i, (text, target) in enumerate(example["segments"])]
        return {**example, "segments": segments}
    messages = example["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    clipped = [{**m, "content": clip_text(m["content"], budget, "start" if i == last else "end")}
               if isinstance(m.get("content"), str) else m for i, m in enumerate(messages)]
    return {**example, "messages": clipped}
