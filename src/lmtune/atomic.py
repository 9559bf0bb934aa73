"""Every file and directory lmtune writes goes through here: written beside its final name, flushed
to disk, then renamed into place, so a kill at any moment leaves the old version or the new one
under that name, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from lmtune.errors import ConfigError


def refuse_existing(*paths) -> None:
    """Result files are never written over: a second run must not lose the first one's output. Checked,
    with the location being writable, before the work that produces them."""
    for path in paths:
        if path and Path(path).exists():
            raise ConfigError(f"{path} exists; choose another file name or remove it first")
        if path:
            writable_parent(Path(path).parent, str(path))


def empty_dir(path: str | Path, what: str = "output directory") -> Path:
    """A directory to write into that holds nothing yet (created when missing)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what}: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{what}: {out} is not empty; choose another directory or remove it first")
    writable_parent(out, what)
    out.mkdir(parents=True, exist_ok=True)
    return out


def writable_parent(path: Path, what: str) -> None:
    """A location lmtune cannot create or write is one line naming it, not an OSError traceback
    later. Tried with a probe file in the nearest directory that exists (permissions alone do not
    tell: root ignores them, and a read-only file system says so only when written)."""
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    reason = "not a directory"
    if parent.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".lmtune-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
            return
        except OSError as e:
            reason = e.strerror or type(e).__name__
    raise ConfigError(f"{what}: cannot write in {parent} ({reason}); choose another location")


@contextlib.contextmanager
def disk_errors(path: str | Path):
    """An OSError while writing (disk full, read-only file system, permission) becomes one located line."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"{path}: cannot write ({reason}); free some space or choose another location; "
                          "what was written before is unchanged") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_atomic(path: str | Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """`write(tmp)` fills a temporary file beside `path` (a library that writes to a path: a
    picture, a numpy array), which is then flushed and renamed into place."""
    path = Path(path)
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """One line appended and flushed (JSON-lines logs): a kill can cut only the line being written,
    which the readers skip."""
    with disk_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()


def save_dir_atomic(target: str | Path, save: Callable[[Path], None]) -> None:
    """Let `save` fill a temporary sibling directory, flush it, then move it into place."""
    target = Path(target)
    with disk_errors(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            save(tmp)
            fsync_tree(tmp)
            if target.exists():
                remove_tree(target)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_tree(path: Path) -> None:
    """Delete a directory so that a kill at any moment leaves it whole or gone from its name: it is
    renamed to a hidden sibling first, then removed."""
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.removing-", dir=path.parent))
    os.replace(path, doomed / path.name)
    shutil.rmtree(doomed, ignore_errors=True)


def fsync_tree(path: Path) -> None:
    """Flush every file (and the directory entries) to disk before a rename publishes them."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
