"""Whether other processes used the CPUs while the planner timed a block: a busy machine makes every
timed step slower, and the estimate says so instead of predicting a 27-minute epoch for a 4-minute
one without a word (what `lmtune plan` did while another training ran)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

# Above this share of the machine taken by others, the time estimate carries a warning.
BUSY_SHARE = 0.2


@dataclass
class Load:
    others: float | None = None  # share of all CPUs used by other processes meanwhile (None: not measurable)


def busy_seconds() -> tuple[float, int] | None:
    """(CPU seconds spent on all CPUs since boot, how many CPUs /proc/stat counts) (Linux); None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
        fields = [int(v) for v in lines[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), max(cpus, 1)


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system  # every thread of this process


@contextmanager
def other_load():
    """Measures, over the block it wraps, the share of the machine's CPUs that other processes used."""
    load = Load()
    start_all, start_own, start = busy_seconds(), own_seconds(), time.perf_counter()
    yield load
    end_all = busy_seconds()
    wall = time.perf_counter() - start
    if start_all is None or end_all is None or wall <= 0:
        return
    others = (end_all[0] - start_all[0]) - (own_seconds() - start_own)
    load.others = min(max(others / (wall * end_all[1]), 0.0), 1.0)


def busy_warning(share: float | None) -> str | None:
    if share is None or share < BUSY_SHARE:
        return None
    return (f"other processes used {share:.0%} of the CPUs while the step was timed: the time estimate is too long "
            "(on 2 cores, two trainings each run several times slower); run lmtune plan again when the machine is quiet")
