"""Checkpoints that a kill cannot break, and finding the one to resume from.

The Trainer writes `checkpoint-N/` file by file, in place: a `kill -9` halfway leaves a directory
that looks like a checkpoint and is not. lmtune lets it write into `.staging/checkpoint-N/` and
renames the finished directory into place, so every `checkpoint-N/` that exists is complete.
Deleting is the same problem backwards (transformers' rotation removes a checkpoint file by file):
an old checkpoint is first renamed out of the `checkpoint-N` pattern, then removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from lmtune.atomic import fsync_dir, fsync_tree
from lmtune.errors import ConfigError
from lmtune.run_dir import check_weights_dir

STAGING = ".staging"
# The resolved config of the run that wrote a checkpoint, saved inside it: resume compares it with
# the config it is given, so a checkpoint of another run is never continued by mistake.
CHECKPOINT_CONFIG = "lmtune-config.yaml"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# What the Trainer needs to resume; present in every checkpoint it writes.
REQUIRED = ("trainer_state.json",)


def is_complete(path: Path) -> bool:
    return path.is_dir() and bool(CHECKPOINT.match(path.name)) and all((path / f).is_file() for f in REQUIRED)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    if not checkpoints_dir.is_dir():
        return None
    done = [p for p in checkpoints_dir.iterdir() if is_complete(p)]
    return max(done, key=lambda p: int(CHECKPOINT.match(p.name).group(1)), default=None)


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT.match(path.name).group(1))


def resume_checkpoint(checkpoints_dir: Path, resume: str) -> Path:
    """`--resume` (the newest complete checkpoint) or `--resume PATH` (that one), its weights
    checked whole before the Trainer reads them."""
    if resume == "latest":
        found = latest_checkpoint(checkpoints_dir)
        if found is None:
            raise ConfigError(f"--resume: no complete checkpoint in {checkpoints_dir}; "
                              "train without --resume, or set train.save_steps to write checkpoints")
        path = found
    else:
        path = Path(resume)
        if not is_complete(path):
            raise ConfigError(f"--resume {path}: not a complete checkpoint directory (checkpoint-N with trainer_state.json)")
    older = sorted((p for p in path.parent.iterdir() if is_complete(p) and checkpoint_step(p) < checkpoint_step(path)),
                   key=checkpoint_step)
    remedy = f"resume from an older one: --resume {older[-1]}" if older else "train again without --resume"
    check_weights_dir(path, remedy)
    return path


def publish(staged: Path, final: Path) -> None:
    """Move a finished checkpoint from the staging directory into place, atomically."""
    fsync_tree(staged)
    if final.exists():  # the same step saved twice (a resumed run): the new one replaces it
        retire(final)
    os.replace(staged, final)
    with contextlib.suppress(OSError):  # the staging directory is left only while a save is under way
        staged.parent.rmdir()
    fsync_dir(final.parent)


def retire(checkpoint: Path) -> None:
    """Delete a checkpoint so that a kill at any moment leaves it whole or not named checkpoint-N."""
    doomed = checkpoint.parent / STAGING / f"retired-{checkpoint.name}"
    doomed.parent.mkdir(exist_ok=True)
    shutil.rmtree(doomed, ignore_errors=True)  # a retirement a kill interrupted
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    with contextlib.suppress(OSError):
        doomed.parent.rmdir()


def rotate(checkpoints_dir: Path, keep: int | None, best: str | None) -> None:
    """Keep `keep` checkpoints, the newest and the best always among them (the Trainer's rule); oldest go first."""
    if not keep:
        return
    found = sorted((p for p in checkpoints_dir.iterdir() if CHECKPOINT.match(p.name)), key=checkpoint_step)
    protected = {found[-1]} | ({Path(best)} if best else set())
    remaining = len(found)
    for checkpoint in found:
        if remaining <= max(keep, len(protected)):
            break
        if checkpoint not in protected:
            retire(checkpoint)
            remaining -= 1


def clear_staging(checkpoints_dir: Path) -> None:
    """Remove what a killed save (or deletion) left behind."""
    shutil.rmtree(checkpoints_dir / STAGING, ignore_errors=True)
