"""Read rows from local files, each with its location (file:line) for error messages."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator, Union

from lmtune.errors import DataError

# (location such as "train.jsonl:12", the row's fields). A line that cannot be read at all comes as
# a DataError in place of the row, so that `on_bad_rows: skip` can count it and go on.
Row = tuple[str, Union[dict[str, Any], DataError]]


def read_rows(path: str | Path) -> Iterator[Row]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: data file not found")
    suffix = p.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")
    yield from readers[suffix](p)


def _read_jsonl(p: Path) -> Iterator[Row]:
    # Binary lines, decoded one by one, so that a bad byte or bad JSON is reported with its line.
    with open(p, "rb") as f:
        for number, raw in enumerate(f, start=1):
            loc = f"{p}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield loc, DataError(f"{loc}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield loc, DataError(f"{loc}: not valid JSON ({e.msg}); each line must be one JSON object")
                continue
            if not isinstance(row, dict):
                yield loc, DataError(f"{loc}: expected a JSON object, got {type(row).__name__}")
                continue
            yield loc, row


def _read_json(p: Path) -> Iterator[Row]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict):  # {"col": [values...]} (column-oriented)
        lengths = {len(v) for v in data.values() if isinstance(v, list)}
        if len(lengths) != 1 or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"{p}: expected a list of records or a mapping of equal-length columns")
        data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of records")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{p}: record {index}: expected a JSON object, got {type(row).__name__}")
        yield f"{p}: record {index}", row


def _read_csv(p: Path) -> Iterator[Row]:
    delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
    with open(p, encoding="utf-8", newline="") as f:
        try:
            reader = csv.DictReader(f, delimiter=delimiter)
            for row in reader:
                yield f"{p}:{reader.line_num}", dict(row)
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as UTF-8") from None
        except csv.Error as e:
            raise DataError(f"{p}:{reader.line_num}: bad CSV ({e})") from None


def _read_parquet(p: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{p}: cannot read parquet ({e})") from None
    for index, row in enumerate(table.to_pylist()):
        yield f"{p}: row {index}", row
