"""Pad a list of tokenised examples into a batch."""

from __future__ import annotations

from typing import Any

import torch

from lmtune.data.tokenize import IGNORE


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
        if "token_type_ids" in rows[0]:  # sentence pairs on BERT-like encoders
            out["token_type_ids"] = self._batch(rows, "token_type_ids", width, 0)
        if "labels" in rows[0]:
            if isinstance(rows[0]["labels"], (list, tuple)):  # one label per token
                out["labels"] = self._batch(rows, "labels", width, IGNORE)
            else:  # one class or value per row (seq_cls, regression)
                out["labels"] = torch.tensor([r["labels"] for r in rows])
        if "label" in rows[0]:
            out["label"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
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
    """

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, labels, positions, classes = [], [], [], []
        for r in rows:
            n = len(r["input_ids"])
            ids += list(r["input_ids"])
            labels += [IGNORE] + list(r["labels"][1:])
            positions += range(n)
            if "label" in r:
                classes.append(r["label"])
        out = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }
        if classes:
            out["label"] = torch.tensor(classes, dtype=torch.long)
        return out
