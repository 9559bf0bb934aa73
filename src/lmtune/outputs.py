"""The run directory: checked before a run starts, written atomically (temp file + rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from lmtune.errors import ConfigError


def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse a non-empty directory unless the user asked to write into it."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output.dir: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output.dir: {out} is not empty; choose another directory or set output.overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    return out


def refuse_existing(*paths) -> None:
    """Result files are never written over: a second run must not lose the first one's output."""
    for path in paths:
        if path and Path(path).exists():
            raise ConfigError(f"{path} exists; choose another file name or remove it first")


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_dir_atomic(target: str | Path, save: Callable[[Path], None]) -> None:
    """Let `save` fill a temporary sibling directory, then move it into place."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
