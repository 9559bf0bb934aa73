"""Tokens a run computes, padding included: the Trainer's batch order replayed on the real row
lengths. The collator pads each batch to its longest row, and length grouping only sorts rows
within mega-batches of a quarter of the data (at most 50 batches), so a short run pads far more
than its mean row length suggests: 36 GSM8K rows in batches of 6 averaged 214 tokens but were
computed at 295."""

from __future__ import annotations

from typing import Callable

import torch


def padded_length(lengths: list[int], batch_size: int, grouped: bool, seed: int,
                  computed_once: Callable[[list[int]], int] | None = None) -> float:
    """Mean length that a row is computed at over one epoch: each batch's longest row, weighted by
    the rows in the batch, less the common prompt that `computed_once` (rows' indices -> tokens)
    says the batch computes once (tasks/prompt_once.py). Replays transformers' LengthGroupedSampler
    (or a random order)."""
    if not lengths:
        return 0.0
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    if grouped:
        order = get_length_grouped_indices(lengths, batch_size, generator=generator)
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    once = computed_once or (lambda batch: 0)
    return sum(len(b) * max(lengths[i] for i in b) - (len(b) - 1) * once(b) for b in batches) / len(lengths)
