"""The planner's table and its advice."""

from __future__ import annotations

from lmtune.config import validate_config
from lmtune.errors import ConfigError
from lmtune.plan.busy import busy_warning
from lmtune.plan.estimate import GB
from lmtune.report import console as default_console


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def heap_growth_note(device: str, stats: dict | None, steps: int) -> str | None:
    """What the peak leaves out on a CPU: over many steps whose batches change length, the C
    library's allocator keeps freed activation memory in pieces too small for the next long batch, so
    resident memory climbs above one step's peak (the demo's 250 steps: 2.2 GB after the first step,
    3.7 GB by the end, in steps at each length-grouped sweep's longest batch; docs/planner.md)."""
    varied = stats is not None and stats["max"] > 1.25 * stats["mean"]
    # 50 batches: transformers' length-grouped mega-batch, one sweep from long rows to short ones.
    if device != "cpu" or not varied or steps <= 50:
        return None
    return ("on a CPU, resident memory can climb above this peak over a run of batches that change length "
            "(freed memory kept in pieces: 1.7x one step's over the demo's epoch)")


def print_plans(plans, cfg, shape, batch, stats, rate, device, precision, console=None) -> None:
    console = console or default_console
    from rich.table import Table

    from lmtune.plan.command import available_memory, suggestions

    available, where = available_memory(device)
    data = (f"{stats['rows']:,} rows, mean {stats['mean']:.0f} / longest {stats['max']} tokens, "
            f"{stats['targets']:.1f} targets per row; computed at {stats['padded']:.0f} per row {batching(cfg)}"
            if stats else f"no data: rows of {batch.length} tokens assumed")
    console.print(f"lmtune plan: {cfg.model.name}: {shape.total_params / 1e6:,.1f}M parameters, {shape.layers} blocks; "
                  f"batch {cfg.train.batch_size} x accumulation {cfg.train.grad_accum}, {precision}, {device}")
    console.print(f"data: {data}")
    table = Table(show_header=True)
    table.add_column("method", no_wrap=True)
    for column in ("trainable", "weights", "grads + optimizer", "activations + logits", "peak",
                   "peak, grad. ckpt", "time / epoch", "fits"):
        table.add_column(column, justify="right")
    for p in plans:
        m, c = p.memory, p.memory_checkpointed
        table.add_row(p.method, f"{p.trainable / 1e6:,.2f}M ({100 * p.trainable / p.total:.2f}%)", f"{m.weights / GB:.2f} GB",
                      f"{(m.gradients + m.optimizer) / GB:.2f} GB", f"{(m.activations + m.logits) / GB:.2f} GB",
                      f"{m.peak / GB:.2f} GB", f"{c.peak / GB:.2f} GB", _time(p.seconds_per_epoch),
                      "yes" if m.peak <= available else ("with ckpt" if c.peak <= available else "no"))
    console.print(table)
    console.print(f"{where}: {available / GB:.1f} GB. Peak = weights + gradients + optimizer state + activations + "
                  f"logits + {plans[0].memory.overhead / GB:.1f} GB for the process itself.")
    growth = heap_growth_note(device, stats, plans[0].steps_per_epoch)
    if growth:
        console.print(f"memory: {growth}")
    packing = packing_tip(cfg, stats)
    if packing:
        console.print(f"batches: {packing}")
    if rate is not None:
        console.print(f"time: {rate.flops_per_s / 1e9:,.0f} GFLOP/s, {rate.how}; {plans[0].steps_per_epoch:,} optimizer steps per epoch")
        warning = busy_warning(rate.busy)
        if warning:
            console.print(f"[yellow]warning:[/] {warning}")
    if len(plans) == 1 and plans[0].memory.peak > available:
        console.print("does not fit; what would:")
        for tip in suggestions(plans[0], cfg, shape, batch, available, device, precision):
            console.print(f"  - {tip}")


# Packing computes the real tokens only, at 1.0-1.3x grouping's cost per token computed: measured
# 1.39-1.45x faster where grouping computed 1.42-1.57x the real tokens, no faster at 1.22 and slower
# at 1.08 (docs/benchmarks.md, Packing).
PACKING_PAYS = 1.35


def packing_tip(cfg, stats: dict | None) -> str | None:
    """Advice to pack when padding makes the batches compute far more than the real tokens and the
    config's own checks accept packing (the task's, the method's)."""
    if not stats or cfg.data.packing:
        return None
    ratio = stats["padded"] / max(stats["mean"], 1)
    if ratio < PACKING_PAYS or not packable(cfg):
        return None
    return (f"padding makes each row computed at {ratio:.2f}x its real tokens; data.packing=true computes only those "
            f"(1.4x faster at such a gap here: docs/benchmarks.md)")


def packable(cfg) -> bool:
    """Whether the same config with data.packing=true passes validation."""
    raw = cfg.model_dump(mode="json")
    raw["data"]["packing"] = True
    try:
        validate_config(raw, "<packing>")
    except ConfigError:
        return False
    return True


def batching(cfg) -> str:
    """How the run's batches are made, which sets the tokens a row is computed at (plan/batching.py)."""
    if cfg.data.packing:
        return "(packed: no padding)"
    order = "grouped by length" if cfg.train.group_by_length else "in random order"
    return f"(padding included, batches {order}, a batch's common prompt once where it has one)"
