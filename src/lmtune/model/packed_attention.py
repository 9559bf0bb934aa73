"""Attention for packed rows that costs what the rows cost, not what the pack costs.

A packed batch (data.packing) is one long row of several examples, position_ids restarting at 0 at
each. transformers turns that into a block-diagonal causal mask, and sdpa evaluates it densely:
attention over a pack of 8 rows of 250 tokens costs as much as one row of 2,000, eight times the
work of the rows themselves (flash-attention's variable-length kernels avoid that, but not on a CPU
or without flash-attn). This attention runs sdpa causally on each example of the pack in turn, so
no query ever meets a key of another example, and falls back to plain sdpa with transformers' mask
for everything that is not a pack (padded evaluation batches, generation with a cache).
"""

from __future__ import annotations

import torch

NAME = "lmtune_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    starts = pack_starts(position_ids, query, key)
    if starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return attend_by_example(module, query, key, value, starts, **kwargs)


def attend_by_example(module, query, key, value, starts: list[int], **kwargs):
    """sdpa, causally, on each example of a packed row that starts at `starts`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sizes = [end - start for start, end in zip(starts, [*starts[1:], query.shape[2]])]
    # split, not slices: its backward is one concatenation, not a zero-filled gradient per slice
    pieces = [sdpa_attention_forward(module, q, k, v, None, **{**kwargs, "is_causal": True})[0]
              for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2))]
    return torch.cat(pieces, dim=1), None  # sdpa_attention_forward returns (batch, tokens, heads, dim)


def pack_starts(position_ids, query, key) -> list[int] | None:
    """Where each example of a single packed row starts, or None when this is not a pack."""
    if position_ids is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return None
    positions = position_ids[0] if position_ids.dim() == 2 else position_ids
    if positions.shape[0] != query.shape[2]:
        return None
    starts = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten().add(1).tolist()
    return [0, *starts] if starts else None


def use_packed_attention(model) -> bool:
    """Switch a model that attends with sdpa to packed_sdpa; models on other attention keep it."""
    return switch_sdpa(model, NAME, packed_sdpa)


def switch_sdpa(model, name: str, attention) -> bool:
    """Register `attention` under `name`, with sdpa's masks (for what is not a pack), and switch a
    model that attends with sdpa to it; models on other attention keep theirs."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(name, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    model.set_attn_implementation(name)
    return True
