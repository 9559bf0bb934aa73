"""File -> validated examples -> tokenised datasets.Dataset, cached on disk.

The tokenised split is stored as an Arrow file in lmtune's cache, keyed by the file's content, the
data and task config and the tokenizer, so a second run with the same inputs does not tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmtune import __version__
from lmtune.config import DataConfig, TaskConfig
from lmtune.data.formats import FORMATS, Example
from lmtune.data.sources import read_rows
from lmtune.errors import DataError
from lmtune.model.builtin import cache_root

# Bump when the meaning of cached token ids changes.
PIPELINE_VERSION = 1


@dataclass
class SplitInfo:
    path: str
    rows: int  # rows used
    skipped: int  # bad rows skipped (on_bad_rows: skip)
    truncated: int  # rows longer than max_length, cut


def load_examples(path: str, cfg: DataConfig) -> tuple[list[Example], int]:
    """Read and check every row. Returns the examples and how many bad rows were skipped."""
    convert = FORMATS.get(cfg.format)
    examples, skipped = [], 0
    for loc, row in read_rows(path):
        try:
            if isinstance(row, DataError):
                raise row
            examples.append(convert(row, loc, cfg))
        except DataError as e:
            if cfg.on_bad_rows == "error":
                raise DataError(f"{e}\n(set data.on_bad_rows: skip to skip bad rows and count them)") from None
            skipped += 1
    if not examples:
        raise DataError(f"{path}: no usable rows")
    return examples, skipped


def sample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """At most `limit` examples, drawn with a seeded shuffle so a sorted file still gives a fair sample."""
    if limit is None or limit >= len(examples):
        return examples
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:limit])]


def read_split(path: str, cfg: DataConfig, limit: int | None, seed: int) -> tuple[list[Example], int]:
    """Checked examples of one file (at most `limit`), and the count of bad rows skipped."""
    examples, skipped = load_examples(path, cfg)
    return sample(examples, limit, seed), skipped


def tokenize_split(
    path: str,
    examples: list[Example],
    skipped: int,
    data_cfg: DataConfig,
    task_cfg: TaskConfig,
    tokenizer,
    encode: Callable[[dict], dict],
    limit: int | None,
    seed: int,
):
    """Tokenise one split with the task's `encode` (a batched datasets.map function), cached."""
    from datasets import Dataset

    key = _cache_key(path, data_cfg, task_cfg, tokenizer, limit, seed)
    cache_file = cache_root() / "datasets" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    raw = Dataset.from_list(examples)
    ds = raw.map(
        encode,
        batched=True,
        batch_size=256,
        remove_columns=raw.column_names,
        cache_file_name=str(cache_file),
        new_fingerprint=key,
        desc=f"tokenising {Path(path).name}",
    )
    info = SplitInfo(path=path, rows=len(ds), skipped=skipped, truncated=int(sum(ds["truncated"])))
    return ds, info


def build_split(path, data_cfg, task_cfg, tokenizer, encode, limit, seed):
    """read_split + tokenize_split."""
    examples, skipped = read_split(path, data_cfg, limit, seed)
    return tokenize_split(path, examples, skipped, data_cfg, task_cfg, tokenizer, encode, limit, seed)


def _cache_key(path, data_cfg: DataConfig, task_cfg: TaskConfig, tokenizer, limit, seed) -> str:
    h = hashlib.sha256()
    h.update(Path(path).read_bytes())
    parts = {
        "data": data_cfg.model_dump(mode="json"),
        "task": task_cfg.model_dump(mode="json"),
        "limit": limit,
        "seed": seed,
        "version": [__version__, PIPELINE_VERSION],
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
    }
    h.update(json.dumps(parts, sort_keys=True).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    return h.hexdigest()[:24]
