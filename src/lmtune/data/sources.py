"""Read rows from local files, each with its location (file:line) for error messages."""

from __future__ import annotations

import csv
import glob
import json
import re
from pathlib import Path
from typing import Any, Iterator, Union

from lmtune.errors import DataError

# (location such as "train.jsonl:12", the row's fields). A line that cannot be read at all comes as
# a DataError in place of the row, so that `on_bad_rows: skip` can count it and go on.
Row = tuple[str, Union[dict[str, Any], DataError]]


SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")


def read_rows(spec: str | Path, txt_unit: str = "line") -> Iterator[Row]:
    """Rows of a file, of every data file in a directory or glob, or of a hub dataset."""
    files = resolve_files(str(spec))
    if files is None:
        yield from _read_hub(str(spec))
        return
    for p in files:
        yield from _read_file(p, txt_unit)


def resolve_files(spec: str) -> list[Path] | None:
    """The files a spec names, or None when it names no local path (then it is a hub dataset)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{p}: the directory holds no data files ({', '.join(SUFFIXES)})")
        return files
    if any(c in spec for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"{spec}: the pattern matches no file")
        return files
    if spec.startswith((".", "/", "~")) or not _HUB_NAME.match(spec) or Path(spec).suffix.lower() in SUFFIXES:
        where = "" if p.is_absolute() else f" (relative paths are read from the current directory, {Path.cwd()})"
        raise DataError(f"{spec}: data file not found{where}")
    return None


def _read_file(p: Path, txt_unit: str) -> Iterator[Row]:
    suffix = p.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv, ".parquet": _read_parquet}
    if suffix == ".txt":
        yield from _read_txt(p, txt_unit)
    elif suffix in readers:
        yield from readers[suffix](p)
    else:
        raise DataError(f"{p}: unsupported file type {suffix!r}; use {', '.join(SUFFIXES)}")


def _read_hub(spec: str) -> Iterator[Row]:
    """owner/name[:split] through datasets.load_dataset (needs a reachable hub)."""
    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        from datasets import load_dataset

        rows = load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{spec}: not a local file, and loading it as a hub dataset failed: {first}") from None
    for index, row in enumerate(rows):
        yield f"{name}[{split}] row {index}", row


def _read_txt(p: Path, unit: str) -> Iterator[Row]:
    """Raw text: one document per line (blank lines skipped) or the whole file as one document."""
    if unit == "file":
        try:
            yield f"{p}", {"text": p.read_bytes().decode("utf-8-sig")}
        except UnicodeDecodeError as e:
            yield f"{p}", DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as UTF-8")
        return
    for loc, line in _decoded_lines(p):
        if isinstance(line, DataError) or line.strip():
            yield loc, line if isinstance(line, DataError) else {"text": line.rstrip("\r\n")}


def _decoded_lines(p: Path) -> Iterator[tuple[str, Union[str, DataError]]]:
    # Binary lines, decoded one by one, so that a bad byte is reported with its line. A UTF-8
    # byte-order mark (Excel and Notepad write one) is not part of the first line.
    with open(p, "rb") as f:
        for number, raw in enumerate(f, start=1):
            loc = f"{p}:{number}"
            try:
                yield loc, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield loc, DataError(f"{loc}: not UTF-8 text ({e.reason} at byte {e.start}); re-save the file as UTF-8")


def _read_jsonl(p: Path) -> Iterator[Row]:
    for loc, line in _decoded_lines(p):
        if isinstance(line, DataError):
            yield loc, line
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
        data = json.loads(p.read_text(encoding="utf-8-sig"))
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
    with open(p, encoding="utf-8-sig", newline="") as f:
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
