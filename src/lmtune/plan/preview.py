"""`lmtune data`: counts, lengths and the first rendered examples with the trained-on tokens
highlighted, so that a user can check the loss mask before spending hours of compute."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lmtune.config import Config
from lmtune.data.dataset import read_splits
from lmtune.data.examples import Chat, Preference
from lmtune.data.formats import FORMATS
from lmtune.data.tokenize import IGNORE, count_targets, labels_per_token
from lmtune.loading import load_tokenizer_of, make_task
from lmtune.report import console as report_console
from lmtune.training.prepare import tokenize_splits


def preview(cfg: Config, rows: int = 3, console: Console | None = None) -> dict:
    """Tokenise the splits with the run's tokenizer (no model weights are loaded) and show them."""
    console = console or report_console
    tokenizer = load_tokenizer_of(cfg)
    task = make_task(cfg, tokenizer)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"streaming": False})})  # the first rows, in full
    tokenized = tokenize_splits(cfg, read_splits(cfg.data, cfg.train.seed), tokenizer, task)

    table = Table(title=f"data ({task.renderer.mode} template, max_length {cfg.data.max_length})")
    for col in ("split", "source", "rows", "skipped", "truncated", "tokens", "target tokens", "length min / mean / max"):
        table.add_column(col, justify="left" if col in ("split", "source") else "right")
    summary = {}
    masked = "labels" in tokenized["train"][0].column_names  # task embedding has texts, no token targets
    for name, (ds, info) in tokenized.items():
        targets = count_targets(ds["labels"]) if masked else 0
        no_target = sum(all(l == IGNORE for l in labels) for labels in labels_per_token(ds["labels"])) if masked else 0
        lengths = info.lengths
        table.add_row(name, info.source, f"{info.rows:,}", f"{info.skipped:,}", f"{info.truncated:,}", f"{info.tokens:,}",
                      f"{targets:,} ({100 * targets / max(info.tokens, 1):.1f}%)" if masked else "- (pairs)",
                      f"{lengths['min']} / {lengths['mean']} / {lengths['max']}")
        summary[name] = {**vars(info), "target_tokens": targets, "rows_without_target": no_target}
    console.print(table)

    train_ds = tokenized["train"][0]
    if not masked:
        show_pairs(console, tokenizer, train_ds, rows)
        return summary
    answers_end_turns = FORMATS.get(cfg.data.format).family in (Chat, Preference)  # the model must learn to stop
    for warning in mask_warnings(tokenizer, labels_per_token(train_ds["labels"]), answers_end_turns,
                                 summary["train"]["rows_without_target"]):
        console.print(f"[yellow]warning:[/] {warning}")
    console.print("[bold]trained-on tokens[/] are [black on green]highlighted[/]; the rest only conditions the model.")
    for i in range(min(rows, len(train_ds))):
        console.rule(f"train row {i}")
        label = train_ds[i]["labels"]
        if "rejected_input_ids" in train_ds.column_names:  # a preference pair: both answers, each with its mask
            console.print(Text("chosen: ", style="bold") + highlighted(tokenizer, train_ds[i]["input_ids"], label))
            console.print(Text("rejected: ", style="bold")
                          + highlighted(tokenizer, train_ds[i]["rejected_input_ids"], train_ds[i]["rejected_labels"]))
        elif isinstance(label, list):
            console.print(highlighted(tokenizer, train_ds[i]["input_ids"], label))
        else:  # one label for the whole row (a classification or regression head)
            name = cfg.data.labels[label] if cfg.data.labels and isinstance(label, int) else label
            console.print(Text(tokenizer.decode(train_ds[i]["input_ids"]), style="dim") + Text(f"  -> {name}", style="bold"))
    return summary


def show_pairs(console: Console, tokenizer, ds, rows: int) -> None:
    """Each text of a pair as the model reads it (anchor, positive, negative) and its gold score."""
    for i in range(min(rows, len(ds))):
        console.rule(f"train row {i}")
        row = ds[i]
        for column, title in (("input_ids", "anchor"), ("positive_input_ids", "positive"), ("negative_input_ids", "negative")):
            if row.get(column):
                console.print(Text(f"{title}: ", style="bold") + Text(tokenizer.decode(row[column]), style="dim"))
        if row.get("score") is not None:
            console.print(Text(f"score: {row['score']:g}", style="bold"))


def highlighted(tokenizer, ids: list[int], labels: list[int]) -> Text:
    """Runs of target / non-target tokens, each decoded as a whole (a character split over two
    byte-level tokens would not decode token by token)."""
    text = Text()
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or (labels[end] != IGNORE) != (labels[start] != IGNORE):
            style = "black on green" if labels[start] != IGNORE else "dim"
            text.append(tokenizer.decode(ids[start:end]), style=style)
            start = end
    return text


def mask_warnings(tokenizer, labels_per_row: list[list[int]], chat_like: bool, rows_without_target: int) -> list[str]:
    """Mistakes that a healthy loss curve hides."""
    warnings = []
    if rows_without_target:
        warnings.append(f"{rows_without_target} training rows have no target token at all: they train nothing")
    eos = tokenizer.eos_token_id
    if chat_like and eos is not None and not any(eos in [l for l in labels if l != IGNORE] for labels in labels_per_row):
        warnings.append(f"the end-of-turn token {tokenizer.eos_token!r} is never a target: the model will not learn to stop")
    return warnings
