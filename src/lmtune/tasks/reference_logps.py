"""The reference's log-probs of every pair, computed once before training (task.precompute_reference).

DPO compares the model with its starting point on every batch: one more forward pass per step
(about a quarter of a LoRA step), and for full fine-tuning or freezing a frozen copy of the model
in memory. The starting point never changes, so its log-probs of each pair can be computed once,
with the model as loaded, before the method is applied, and read from the data while training:
no reference pass, no copy.

They are cached on disk beside the tokenised data, keyed by that data and a fingerprint of the
weights they were computed with, so a resumed run or a second run on the same data and model
reads them back. The columns `reference_chosen_logp` / `reference_rejected_logp` ride with each
row to the collator, which hands them to the loss as `reference_logps` (chosen ones, then rejected).
"""

from __future__ import annotations

import hashlib
import json

import torch

from lmtune.atomic import write_json_atomic
from lmtune.model.builtin import cache_root
from lmtune.model.precision import autocast, model_device

COLUMNS = ("reference_chosen_logp", "reference_rejected_logp")


def weights_fingerprint(model, samples: int = 64) -> str:
    """A hash of every tensor's name, shape, dtype and a strided sample of its values: two models
    that differ anywhere a fine-tune would change them differ here, without hashing every byte."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            picked = flat[:: max(1, flat.numel() // samples)][:samples].float().cpu()
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(picked.numpy().tobytes())
    return h.hexdigest()


def with_reference_logps(task, model, dataset, batch_size: int, precision: str):
    """The dataset with the reference's log-probs of each row's two answers as two more columns."""
    key = hashlib.sha256(f"{dataset._fingerprint}|{weights_fingerprint(model)}|{precision}".encode()).hexdigest()[:24]
    cache = cache_root() / "reference_logps" / f"{key}.json"
    if cache.is_file():
        chosen, rejected = json.loads(cache.read_text(encoding="utf-8"))
    else:
        chosen, rejected = compute(task, model, dataset, batch_size, precision)
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, [chosen, rejected])
    return dataset.add_column(COLUMNS[0], chosen).add_column(COLUMNS[1], rejected)


@torch.inference_mode()
def compute(task, model, dataset, batch_size: int, precision: str) -> tuple[list[float], list[float]]:
    device = model_device(model)
    collate = task.collator()
    chosen: list[float] = []
    rejected: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision):
            for start in range(0, len(dataset), batch_size):
                rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
                batch = collate([dict(zip(rows.column_names, values)) for values in zip(*rows.to_dict().values())])
                batch = {k: v.to(device) for k, v in batch.items()}
                pair = task.reference_logps(model, batch).float().chunk(2)
                chosen += pair[0].tolist()
                rejected += pair[1].tolist()
    finally:
        model.train(was_training)
    return chosen, rejected


def batch_reference_logps(rows: list[dict]) -> torch.Tensor | None:
    """A batch's precomputed reference log-probs (chosen ones, then rejected), when its rows have them."""
    if COLUMNS[0] not in rows[0]:
        return None
    return torch.tensor([r[COLUMNS[0]] for r in rows] + [r[COLUMNS[1]] for r in rows], dtype=torch.float32)
