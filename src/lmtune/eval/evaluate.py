"""`lmtune eval`: the task's metrics of a saved run on its validation split or on any file, and
for SFT, generations beside the references with exact match and ROUGE-L."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lmtune.atomic import write_text_atomic
from lmtune.data.dataset import Split, load_examples, read_validation, tokenize_split
from lmtune.errors import ConfigError
from lmtune.eval.text_metrics import exact_match, rouge_l
from lmtune.generation import Engine, SamplingParams
from lmtune.loading import load_for_inference
from lmtune.run_dir import RunDir


def evaluate_run(run_dir: str | Path | RunDir, data: Optional[str] = None, generations: Optional[str] = None,
                 max_generations: int = 50, max_new_tokens: int = 256, skip_bad_rows: bool = False) -> dict:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    run.check_weights()  # a run without weights (stopped, failed, still training) says so before its data is read
    # The data is read and checked before the model is loaded: a bad row fails at once.
    saved = run.config()
    if skip_bad_rows:
        saved.data.on_bad_rows = "skip"
    hint = "pass --skip-bad-rows"  # the run's data.on_bad_rows cannot be set from `lmtune eval`
    if data:
        examples, skipped = load_examples(data, saved.data, hint)
        split = Split("eval", data, examples, skipped)
    else:
        split = read_validation(saved.data, saved.train.seed, hint)
    if split is None:
        raise ConfigError(f"{run_dir}: the run has no validation data; pass --data FILE")
    loaded = load_for_inference(run)
    cfg, model, tokenizer, precision, task = loaded.cfg, loaded.model, loaded.tokenizer, loaded.precision, loaded.task
    dataset, info = tokenize_split(split, cfg.data, cfg.task, tokenizer, task.encode)
    report = {"data": split.source, "rows": info.rows, **({"skipped": split.skipped} if split.skipped else {}),
              **task.evaluate(model, dataset, cfg.train.eval_batch_size, precision)}
    pairs = reference_pairs(split) if task.generates else []
    if pairs and max_generations > 0:
        engine = Engine(model, tokenizer, task.renderer, precision)
        rows = generate_answers(engine, pairs[:max_generations], max_new_tokens)
        report["generation"] = {
            "rows": len(rows),
            "exact_match": sum(r["exact_match"] for r in rows) / len(rows),
            "rouge_l": sum(r["rouge_l"] for r in rows) / len(rows),
        }
        if generations:
            write_text_atomic(generations, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return report


def reference_pairs(split: Split) -> list[tuple[list[dict], str]]:
    """(the conversation up to its last assistant turn, that turn's text) for each example with
    one; raw text and completion rows have no chat reference."""
    pairs = []
    for ex in split.examples:
        messages = ex.get("messages")
        if messages and messages[-1]["role"] == "assistant":
            pairs.append((messages[:-1], messages[-1]["content"]))
    return pairs


def generate_answers(engine: Engine, pairs: list[tuple[list[dict], str]], max_new_tokens: int) -> list[dict]:
    """Greedy answers beside their references, in the order of the pairs."""
    answers = engine.answer_all([messages for messages, _ in pairs], SamplingParams(max_new_tokens=max_new_tokens))
    return [
        {"prompt": messages[-1]["content"], "reference": reference, "generation": answer,
         "exact_match": exact_match(answer, reference), "rouge_l": rouge_l(answer, reference)}
        for (messages, reference), answer in zip(pairs, answers)
    ]
