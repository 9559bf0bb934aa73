"""Sources -> checked examples -> tokenised datasets.Dataset, cached on disk.

A split is read and checked in full before any model is loaded (a bad row fails in a second).
The tokenised split is stored as an Arrow file in lmtune's cache, keyed by the examples themselves,
the data and task config and the tokenizer, so a second run with the same inputs does not
tokenise again.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

from lmtune.version import __version__
from lmtune.data.examples import columns, to_row
from lmtune.data.formats import FORMATS
from lmtune.data.sources import read_rows
from lmtune.data.tokenize import TRUNCATED
from lmtune.errors import DataError
from lmtune.model.builtin import cache_root
from lmtune.sections import DataConfig

# Bump when the meaning of cached token ids changes.
PIPELINE_VERSION = 3


@dataclass
class Split:
    """The checked examples of one split, before tokenisation."""

    name: str
    source: str  # what the user named: a path, a glob, "mix of 2 sources", "5% of train"
    examples: list[dict]
    skipped: int = 0  # bad rows skipped (on_bad_rows: skip)


@dataclass
class SplitInfo:
    source: str
    rows: int  # rows after tokenisation (blocks, for raw text); -1 for a stream
    skipped: int
    truncated: int  # rows longer than max_length, cut
    tokens: int = 0
    lengths: dict = field(default_factory=dict)  # min / mean / max tokens per row


# What a user sets to skip bad rows instead of stopping at the first; `lmtune eval` has its own flag.
SKIP_HINT = "set data.on_bad_rows: skip"


def load_examples(spec: str, cfg: DataConfig, skip_hint: str = SKIP_HINT) -> tuple[list[dict], int]:
    """Read and check every row of a source. Returns the examples and the count of bad rows skipped."""
    examples, skipped, first_bad = [], 0, None
    for ex in iter_examples(spec, cfg, skip_hint):
        if isinstance(ex, DataError):
            skipped += 1
            first_bad = first_bad or ex
        else:
            examples.append(ex)
    if not examples:
        # every row skipped as bad (on_bad_rows: skip): the first one's reason says what to fix
        why = f"; all {skipped} were bad and skipped (data.on_bad_rows: skip), the first: {first_bad}" if skipped else ""
        raise DataError(f"{spec}: no usable rows{why}")
    return examples, skipped


def iter_examples(spec: str, cfg: DataConfig, skip_hint: str = SKIP_HINT):
    """Examples one by one; a bad row raises (on_bad_rows: error) or comes as its DataError (skip)."""
    convert = FORMATS.get(cfg.format).convert
    good = 0
    for loc, row in read_rows(spec, cfg.txt_unit):
        try:
            if isinstance(row, DataError):
                raise row
            yield convert(row, loc, cfg)
            good += 1
        except DataError as e:
            if cfg.on_bad_rows == "error":
                # Skipping is offered for a bad row among good ones; when the first row fails, the
                # file itself (a column name, the format) is what to fix, and skipping would drop all.
                raise DataError(f"{e}\n({skip_hint} to skip bad rows and count them)" if good else str(e)) from None
            yield e


def shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def sample(examples: list[dict], limit: Optional[int], seed: int) -> list[dict]:
    """At most `limit` examples, drawn with a seeded shuffle so a sorted file still gives a fair
    sample; the file order is kept among those drawn."""
    if limit is None or limit >= len(examples):
        return examples
    chosen = sorted(shuffled(range(len(examples)), seed)[:limit])
    return [examples[i] for i in chosen]


def read_mix(cfg: DataConfig, seed: int) -> Split:
    """Several sources, each with its own format and columns, mixed by weight: a source gets
    weight / sum(weights) of the mixed set (sum of the sources' sizes), repeating its rows when
    its share is larger than itself."""
    parts, skipped = [], 0
    for source in cfg.mix:
        own = cfg.model_copy(update={"format": source.format or cfg.format, "columns": source.columns or cfg.columns})
        examples, bad = load_examples(source.path, own)
        parts.append((examples, source.weight))
        skipped += bad
    total = sum(len(ex) for ex, _ in parts)
    weight_sum = sum(w for _, w in parts)
    mixed: list[dict] = []
    for i, (examples, weight) in enumerate(parts):
        count = round(total * weight / weight_sum)
        order = shuffled(range(len(examples)), seed + i)
        mixed += [examples[order[k % len(order)]] for k in range(count)]
    return Split("train", f"mix of {len(parts)} sources", shuffled(mixed, seed), skipped)


def read_splits(cfg: DataConfig, seed: int) -> dict[str, Split]:
    """train (and validation, from its own source or carved from train by val_size), capped by
    max_samples / max_eval_samples. A streamed train split holds no examples: it is read later."""
    if cfg.mix:
        train = read_mix(cfg, seed)
    elif cfg.train and cfg.streaming:
        train = Split("train", cfg.train, [])  # read lazily by stream_split, as training consumes it
    elif cfg.train:
        train = Split("train", cfg.train, *load_examples(cfg.train, cfg))
    else:
        raise DataError("data.train: no training data; set data.train: path/to/train.jsonl (or data.mix)")
    splits = {"train": train}
    if cfg.validation:
        splits["validation"] = read_validation(cfg, seed)
    elif cfg.val_size:
        n = len(train.examples)
        count = int(cfg.val_size) if cfg.val_size >= 1 else round(cfg.val_size * n)
        if not 0 < count < n:
            raise DataError(f"data.val_size: {cfg.val_size} leaves no rows for training or validation ({n} rows)")
        order = shuffled(range(n), seed)
        held_out = set(order[:count])
        held = [train.examples[i] for i in sorted(held_out)]
        splits["validation"] = Split("validation", f"{count} rows held out of {train.source}",
                                     sample(held, cfg.max_eval_samples, seed))
        train.examples = [ex for i, ex in enumerate(train.examples) if i not in held_out]
    train.examples = sample(train.examples, cfg.max_samples, seed)
    return splits


def read_data(cfg) -> dict[str, Split]:
    """A run's splits (`cfg`: its whole Config: the data section, drawn with train.seed), every row
    read and checked, before any model is loaded. Torch-free, so the command line calls it before
    the training stack loads."""
    return read_splits(cfg.data, cfg.train.seed)


def read_validation(cfg: DataConfig, seed: int, skip_hint: str = SKIP_HINT) -> Optional[Split]:
    """The validation split alone (for evaluation): its own file is read without reading train;
    a split carved by val_size needs train. None when the config has no validation data."""
    if cfg.validation:
        examples, skipped = load_examples(cfg.validation, cfg, skip_hint)
        return Split("validation", cfg.validation, sample(examples, cfg.max_eval_samples, seed), skipped)
    if cfg.val_size:
        return read_splits(cfg, seed)["validation"]
    return None


def tokenize_split(split: Split, data_cfg: DataConfig, task_cfg, tokenizer, encode: Callable[[dict], dict]):
    """Tokenise one split with the task's `encode` (a batched datasets.map function), cached."""
    from datasets import Dataset

    rows = [to_row(ex) for ex in split.examples]
    key = _cache_key(rows, data_cfg, task_cfg, tokenizer)
    cache_file = cache_root() / "datasets" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    raw = Dataset.from_list(rows)
    ds = raw.map(
        encode,
        batched=True,
        batch_size=256,
        remove_columns=raw.column_names,
        cache_file_name=str(cache_file),
        new_fingerprint=key,
        desc=f"tokenising {split.name}",
    )
    lengths = [len(x) for x in ds["input_ids"]]
    info = SplitInfo(
        source=split.source,
        rows=len(ds),
        skipped=split.skipped,
        truncated=int(sum(ds[TRUNCATED])),
        tokens=sum(lengths),
        lengths={"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
    )
    return ds, info


def stream_split(spec: str, cfg: DataConfig, encode: Callable[[dict], dict], seed: int):
    """A training split read lazily (data.streaming): rows are checked and tokenised as training
    consumes them, through a shuffle buffer; a bad row stops the run when it is reached."""
    from datasets import IterableDataset

    def rows():
        for ex in iter_examples(spec, cfg):
            if not isinstance(ex, DataError):
                yield to_row(ex)

    stream = IterableDataset.from_generator(rows)
    stream = stream.map(encode, batched=True, batch_size=256, remove_columns=columns(FORMATS.get(cfg.format).family))
    return stream.shuffle(seed=seed, buffer_size=1000), SplitInfo(source=spec, rows=-1, skipped=0, truncated=0)


def _cache_key(rows: list[dict], data_cfg: DataConfig, task_cfg, tokenizer) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True).encode())
    parts = {
        "data": data_cfg.model_dump(mode="json", exclude={"train", "validation", "mix", "max_samples", "max_eval_samples"}),
        "task": task_cfg.model_dump(mode="json"),
        "version": [__version__, PIPELINE_VERSION],
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
    }
    h.update(json.dumps(parts, sort_keys=True).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    return h.hexdigest()[:24]
