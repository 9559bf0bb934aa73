"""Sentence embeddings from an embedding run (or a plain model with the default pooling): `lmtune
embed`, the server's /v1/embeddings, and the teacher whose embeddings a student learns."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional

import torch

from lmtune.config import validate_config
from lmtune.data.collate import PadCollator
from lmtune.errors import ConfigError, DataError
from lmtune.loading import Loaded, load_for_inference, make_task
from lmtune.model.load import load_model_and_tokenizer
from lmtune.model.precision import autocast, model_device, resolve_precision
from lmtune import hardware
from lmtune.run_dir import RunDir
from lmtune.tasks.embedding import EmbeddingTask


class Embedder:
    """Texts -> (n, dim) fp32 embeddings, in batches of similar lengths, returned in input order.
    One request at a time uses the model (the lock), as the server's generation engines do."""

    def __init__(self, loaded: Loaded):
        if not isinstance(loaded.task, EmbeddingTask):
            where = loaded.run.path if loaded.run else loaded.cfg.model.name
            raise ConfigError(f"{where}: a {loaded.cfg.task.name} run does not make embeddings; train one with task.name=embedding")
        self.model, self.task, self.precision = loaded.model, loaded.task, loaded.precision
        self.lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32) -> tuple[torch.Tensor, int]:
        """(embeddings, tokens read) for the texts."""
        ids, _ = self.task.tokenize([t if t.strip() else " " for t in texts])
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), self.dim)
        device, pad = model_device(self.model), PadCollator(self.task.tokenizer.pad_token_id)
        with self.lock, autocast(device, self.precision):
            for start in range(0, len(order), batch_size):
                chunk = order[start: start + batch_size]
                batch = {k: v.to(device) for k, v in pad([{"input_ids": ids[i]} for i in chunk]).items()}
                out[chunk] = self.task.embed(self.model, batch).cpu()
        return out, sum(map(len, ids))


def load_embedder(source: str | Path | RunDir, pooling: Optional[str] = None, normalize: Optional[bool] = None) -> Embedder:
    """An embedding run as trained, or a plain model (alias, directory, hub id) as a bi-encoder with
    `pooling` (default mean) and `normalize` (default true)."""
    if isinstance(source, RunDir) or (Path(source) / RunDir.CONFIG).is_file():
        return Embedder(load_for_inference(source))
    task = {"name": "embedding", **({"pooling": pooling} if pooling else {}),
            **({"normalize": normalize} if normalize is not None else {})}
    cfg = validate_config({"model": {"name": str(source)}, "data": {"format": "pairs"}, "task": task}, "<embedding model>")
    precision = resolve_precision("auto")
    model, tokenizer = load_model_and_tokenizer(cfg.model, hardware.DTYPES[precision], spec=EmbeddingTask.spec(cfg))
    model.to(hardware.device()).eval()
    return Embedder(Loaded(cfg, model, tokenizer, make_task(cfg, tokenizer), precision))


def read_texts(path: str | Path) -> list[str]:
    """A JSONL file of {"text": ...} rows (or of JSON strings), or a .txt file of one text a line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--input {path}: no such file")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".txt":
        return [line for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not JSON ({e.msg})") from None
        text = row if isinstance(row, str) else row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise DataError(f'{path}:{number}: expected {{"text": "..."}} or a JSON string')
        texts.append(text)
    if not texts:
        raise DataError(f"{path}: no texts")
    return texts


def with_teacher_embeddings(cfg, splits: dict, train_data, eval_data):
    """task.teacher's embeddings of each pair's two texts, added to the tokenised splits as a
    `teacher` column (rows align with the examples they were tokenised from). Computed from the raw
    texts, so the teacher may have another tokenizer; the same pooling and normalisation as the run."""
    teacher = load_embedder(cfg.task.teacher, cfg.task.pooling, cfg.task.normalize)
    out = []
    for name, data in (("train", train_data), ("validation", eval_data)):
        if data is None:
            out.append(None)
            continue
        examples = splits[name].examples
        anchors, _ = teacher.embed([ex["anchor"] for ex in examples])
        positives, _ = teacher.embed([ex["positive"] for ex in examples])
        out.append(data.add_column("teacher", torch.stack([anchors, positives], dim=1).tolist()))
    del teacher
    return tuple(out)
