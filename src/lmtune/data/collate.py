"""Tokenised rows -> a batch of tensors. The columns come from the data: whatever a task's encode
produced is batched (a list per row is padded, one value per row is stacked), except the
bookkeeping column `truncated`."""

from __future__ import annotations

from typing import Any

import torch

from lmtune.data.tokenize import IGNORE, TRUNCATED

# The padding value of each column that holds a list per row (input_ids: the tokenizer's pad id).
PAD_VALUES = {"labels": IGNORE, "token_type_ids": 0}


def row_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in rows[0] if k not in ("input_ids", TRUNCATED)]


class PadCollator:
    """Pads on the right to the longest row of the batch (never to a fixed length)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out = {
            "input_ids": self._batch(rows, "input_ids", width, self.pad_token_id),
            "attention_mask": torch.tensor([self._pad([1] * len(r["input_ids"]), width - len(r["input_ids"]), 0) for r in rows]),
        }
        for key in row_columns(rows):
            if isinstance(rows[0][key], (list, tuple)):  # one value per token: labels, token_type_ids
                if key not in PAD_VALUES:
                    raise ValueError(f"column {key!r} holds a list per row but has no padding value in PAD_VALUES")
                out[key] = self._batch(rows, key, width, PAD_VALUES[key])
            else:  # one value per row: a class index, a number to predict
                out[key] = torch.tensor([r[key] for r in rows])
        return out

    def _batch(self, rows, key: str, width: int, fill: int) -> torch.Tensor:
        return torch.tensor([self._pad(list(r[key]), width - len(r[key]), fill) for r in rows], dtype=torch.long)

    @staticmethod
    def _pad(values: list[int], pad: int, fill: int) -> list[int]:
        return values + [fill] * pad


class PackCollator:
    """Padding-free batches: the rows are concatenated into one, with position_ids restarting at 0
    for each row and no attention_mask, from which the model builds a block-diagonal causal mask
    (attention never crosses rows). The first label of each row is set to -100, so that no row is
    trained to predict its first token from the previous row's last one. No pad token is computed.
    Columns with one value per row (a class index) are stacked as in a padded batch.
    """

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, labels, positions = [], [], []
        for r in rows:
            n = len(r["input_ids"])
            ids += list(r["input_ids"])
            labels += [IGNORE] + list(r["labels"][1:])
            positions += range(n)
        out = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }
        for key in row_columns(rows):
            if key != "labels":
                if isinstance(rows[0][key], (list, tuple)):
                    raise ValueError(f"column {key!r} holds a list per row, which packing cannot concatenate")
                out[key] = torch.tensor([r[key] for r in rows])
        return out
