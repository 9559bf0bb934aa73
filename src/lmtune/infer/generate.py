"""`lmtune generate`: answer one prompt, or a JSONL file of prompts in batches."""

from __future__ import annotations

import json
from pathlib import Path

from lmtune.data.sources import read_rows
from lmtune.data.templates import Renderer
from lmtune.errors import DataError
from lmtune.generation import Engine, SamplingParams
from lmtune.atomic import write_text_atomic


def chat_messages(prompt: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def generate(model, tokenizer, renderer: Renderer, prompt: str, system: str | None = None,
             max_new_tokens: int = 128, temperature: float = 0.0, precision: str = "fp32") -> str:
    """One answer, the prompt rendered as in training."""
    engine = Engine(model, tokenizer, renderer, precision)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    return engine.generate([engine.prompt_ids(chat_messages(prompt, system))], params)[0].text.strip()


def read_prompts(path: str | Path, system: str | None) -> list[tuple[dict, list[dict]]]:
    """(row, messages) for each row of a JSONL file of {"prompt": ...} or {"messages": [...]}."""
    rows = []
    for loc, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        if isinstance(row.get("prompt"), str):
            rows.append((row, chat_messages(row["prompt"], system)))
        elif isinstance(row.get("messages"), list) and row["messages"]:
            rows.append((row, row["messages"]))
        else:
            raise DataError(f"{loc}: expected {{\"prompt\": \"...\"}} or {{\"messages\": [...]}}")
    return rows


def generate_file(engine: Engine, input_path: str, output_path: str, params: SamplingParams,
                  system: str | None = None, batch_size: int = 8) -> int:
    """Answers for every prompt of a JSONL file, batched by length, written in input order."""
    rows = read_prompts(input_path, system)
    answers = engine.answer_all([messages for _, messages in rows], params, batch_size)
    lines = [json.dumps({**row, "output": answer}, ensure_ascii=False) for (row, _), answer in zip(rows, answers)]
    write_text_atomic(output_path, "".join(line + "\n" for line in lines))
    return len(lines)
