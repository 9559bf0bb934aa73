"""loss.png for a run, `lmtune plot RUN_DIR ...` to compare runs on one chart (from log.jsonl), and
the confusion matrix of a classification run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lmtune.errors import ConfigError


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no log.jsonl here; give a run directory written by lmtune train")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{number}: not a JSON line") from None
    return records


def curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (steps, values) for the training loss and every numeric validation metric."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        names = ["loss"] if "loss" in r else []
        names += [k for k, v in r.items() if k.startswith("eval_") and isinstance(v, (int, float))
                  and k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")]
        for name in names:
            steps, values = out.setdefault(name, ([], []))
            steps.append(r["step"])
            values.append(r[name])
    return out


def plot_runs(run_dirs: list[Path], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    runs = [(Path(d).name, curves(read_log(Path(d)))) for d in run_dirs]
    metrics = sorted({k for _, c in runs for k in c if k.startswith("eval_") and k != "eval_loss"})
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(12 if metrics else 7, 4.5), squeeze=False)
    loss_ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, c) in enumerate(runs):
        color = colors[i % len(colors)]
        label = f"{name}: " if len(runs) > 1 else ""
        if "loss" in c:
            loss_ax.plot(*c["loss"], color=color, label=f"{label}training loss")
        if "eval_loss" in c:
            loss_ax.plot(*c["eval_loss"], color=color, linestyle="--", marker="o", label=f"{label}validation loss")
        for j, metric in enumerate(metrics):
            if metric in c:
                axes[0][1].plot(*c[metric], color=color, marker="os^vD"[j % 5], linestyle=":" if j else "-",
                                label=f"{label}{metric.removeprefix('eval_')}")
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    if metrics:
        axes[0][1].set(xlabel="step", title="validation metrics")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(output))


def _save(fig, output: Path) -> Path:
    """Write the figure atomically (temp file + rename) and free it."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".png", dir=output.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, output)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return output


def plot_confusion(matrix: list[list[int]], labels: list[str], output: Path) -> Path:
    """Rows: the true label; columns: the predicted one; each cell its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title="confusion matrix (validation)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    fig.tight_layout()
    return _save(fig, Path(output))
