"""Charts: loss and metric curves of one or more runs (from their log records), and the confusion
matrix of a classification run. Drawing only: the caller reads the runs (RunDir.log())."""

from __future__ import annotations

from pathlib import Path

from lmtune.atomic import write_atomic


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


def plot_runs(runs: list[tuple[str, list[dict]]], output: Path) -> Path:
    """One chart of the training loss and validation metrics of runs given as (name, log records)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    runs = [(name, curves(records)) for name, records in runs]
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
    """Write the figure atomically and free it."""
    import matplotlib.pyplot as plt

    try:
        write_atomic(output, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    finally:
        plt.close(fig)
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
