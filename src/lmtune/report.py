"""What the user sees in the terminal: the data summary and the final run table."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Piped output (CI logs, `| tee`) gets 120 columns rather than rich's 80, so paths do not wrap.
console = Console(highlight=False, width=shutil.get_terminal_size((120, 24)).columns)


def print_data_summary(splits: dict[str, dict], template_mode: str) -> None:
    """One line per split: rows, source, template, rows skipped and cut."""
    for name, info in splits.items():
        rows = "streamed" if info["rows"] < 0 else f"{info['rows']:,} rows"
        line = f"lmtune: {name}: {rows} from {info['source']} (template: {template_mode})"
        if info["skipped"]:
            line += f", {info['skipped']:,} bad rows skipped"
        if info["truncated"]:
            line += f", {info['truncated']:,} rows longer than data.max_length were cut (prompt cut from the left)"
        print(line, flush=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_run_summary(metrics: dict, headline: str, out: str | Path) -> None:
    table = Table(title="lmtune run", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    zero, final = metrics.get("zero_shot", {}), metrics.get("final", {})
    for name in dict.fromkeys([headline, *final, *zero]):
        if name in zero:
            table.add_row(f"zero-shot {name}", _fmt(zero[name]))
        if name in final:
            table.add_row(f"fine-tuned {name}", _fmt(final[name]))
    t = metrics["train"]
    table.add_row("train time", f"{t['runtime_s']:.1f} s ({t['steps']} steps)")
    table.add_row("tokens/s (non-padding)", f"{t['tokens_per_s']:,.0f}")
    table.add_row("peak memory", f"{t['peak_memory_mb']:,.0f} MB")
    table.add_row("trainable parameters", f"{t['trainable_params']:,}")
    if "best" in metrics:
        b = metrics["best"]
        table.add_row(f"best validation {b['metric']}", f"{_fmt(b['value'])} ({Path(b['checkpoint'] or '').name})")
    if t.get("skipped_nonfinite_batches"):
        table.add_row("skipped nan/inf batches", str(t["skipped_nonfinite_batches"]))
    table.add_row("saved", f"{metrics['saved']['path']} ({metrics['saved']['size_mb']:.1f} MB)")
    console.print(table)
    console.print(f"run directory: {out} (config.yaml, metrics.json, log.jsonl, loss.png)")
    for warning in metrics.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")


def print_runs(summaries: list[dict]) -> None:
    """`lmtune runs`: one row per run directory, newest first."""
    import time

    table = Table(title="lmtune runs", show_header=True)
    for column in ("run", "state", "step", "task", "method", "model", "result", "tokens/s", "updated"):
        table.add_column(column, justify="right" if column in ("step", "tokens/s") else "left")
    for s in summaries:
        headline = next(iter(s["metrics"].items()), None)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["updated"])) if s["updated"] else ""
        table.add_row(s["name"], s["state"], str(s["step"]), s["task"] or "", s["method"] or "", str(s["model"] or ""),
                      f"{headline[0]} {_fmt(headline[1])}" if headline else "",
                      f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "", when)
    console.print(table)


def print_bench(report: dict) -> None:
    """`lmtune bench`: a row per task metric, a column per model (value ± standard error), and the
    change of each model against the first (the base)."""
    models = report["models"]
    table = Table(title="lmtune bench", show_header=True)
    table.add_column("task")
    table.add_column("metric")
    for entry in models:
        table.add_column(f"{entry['model']}{'' if entry['chat_template'] else ' (no template)'}", justify="right")
    for entry in models[1:]:
        table.add_column(f"Δ {entry['model']}", justify="right")
    for task in report["tasks"]:
        first = models[0]["tasks"][task]
        for metric in first["metrics"]:
            cells = []
            for entry in models:
                r = entry["tasks"][task]
                err = r["stderr"].get(metric)
                cells.append(f"{r['metrics'][metric]:.4f}" + (f" ± {err:.4f}" if isinstance(err, float) else ""))
            cells += [f"{report['differences'][e['model']][task].get(metric, float('nan')):+.4f}" for e in models[1:]]
            table.add_row(f"{task} ({first['samples']}, {first['num_fewshot']}-shot)", metric, *cells)
    console.print(table)
