"""Attention on a CPU as 16-bit batched products, a few heads at a time, with its backward written out.

On this CPU torch's sdpa runs its flash kernel for bf16, at about a third of the matrix-multiply
rate: in an SFT step at 8 x ~200 tokens it took a quarter of the time, its backward 15 ms a block.
transformers' eager attention is faster at short rows but keeps the L x L probabilities in fp32 and
in bf16 for the backward pass (113 MB a block at 8 x 512) and slows down past ~250 tokens as its
fp32 buffers outgrow the cache. Here the scores and the probabilities are formed for a few heads at
a time (about CHUNK_BYTES of fp32), grouped-query heads share their key and value without copies,
only q, k, v, the output and the mask are kept, and the backward pass forms the probabilities again:
1.4-4.6x faster than sdpa, forward and backward, from 8 x 32 to 8 x 512 tokens (docs/benchmarks.md).
The arithmetic is eager attention's (bf16 products, softmax in fp32), so the outputs are eager
attention's, and the mask is transformers' sdpa mask (True: attend).

Used where it applies: a CPU, queries over their own keys and any cached keys before them (a batch's
prompt computed once: tasks/prompt_once.py; a generated token's single query goes to sdpa), no
attention dropout, a boolean mask or none (then causal), not inside torch.compile. Anything else
goes to sdpa; a packed row goes example by example (model/packed_attention.py).
"""

from __future__ import annotations

import torch

from lmtune.model.packed_attention import attend_by_example, pack_starts, switch_sdpa

NAME = "lmtune_chunked"
CHUNK_BYTES = 4 << 20  # fp32 scores of the heads done at once: what stays in this CPU's cache


def chunked_or_sdpa(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """transformers' attention interface: (batch, tokens, heads, dim) output and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    starts = pack_starts(position_ids, query, key)
    if starts is not None:
        return attend_by_example(module, query, key, value, starts, **kwargs)
    # Compiled blocks keep sdpa: as an opaque operator this attention let inductor reorder the
    # blocks' LoRA operators, so their dropout masks came out in another order than eager's.
    if torch.compiler.is_compiling() or not applies(module, query, key, attention_mask, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is None:  # causal, built once for every chunk and the backward pass; cached keys come first
        queries, keys = query.shape[2], key.shape[2]
        drop = torch.ones(1, queries, keys, dtype=torch.bool).triu_(1 + keys - queries)
    else:
        drop = attention_mask[:, 0].logical_not()
    # Under autocast (full fine-tuning: fp32 weights) q, k and v arrive in mixed dtypes; sdpa would
    # run in autocast's dtype, so this does too, with autocast off inside (out= buffers keep their dtype).
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    with torch.autocast("cpu", enabled=False):
        out = ChunkedAttention.apply(query.to(dtype), key.to(dtype), value.to(dtype), drop, float(kwargs["scaling"]))
    return out.transpose(1, 2), None


def applies(module, query, key, mask, kwargs) -> bool:
    queries, keys = query.shape[2], key.shape[2]
    # One query after cached keys is a generated token: sdpa's single-row kernel serves it.
    return (query.device.type == "cpu" and (queries == keys or 1 < queries < keys) and query.shape[1] % key.shape[1] == 0
            and not kwargs.get("dropout") and kwargs.get("scaling") is not None and kwargs.get("is_causal") is not False
            and getattr(module, "is_causal", True) and not kwargs.get("output_attentions")
            and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None
            and (mask is None or (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1
                                  and mask.shape[-2:] == (query.shape[2], key.shape[2]))))


def rows_per_chunk(groups: int, queries: int, keys: int) -> int:
    return max(1, CHUNK_BYTES // (4 * groups * queries * keys))


def chunk_mask(drop, rows: slice, kv_heads: int):
    """The positions not attended to for rows `rows` of the (batch x kv head) dimension: drop has
    one queries x keys mask per batch row, or one for all."""
    if drop.shape[0] == 1:
        return drop[:, None]
    index = torch.arange(rows.start, min(rows.stop, drop.shape[0] * kv_heads)) // kv_heads
    return drop.index_select(0, index)[:, None]


def probabilities(q, k, drop, scale: float):
    """softmax(q k^T * scale) in fp32 (fp64 for fp64 inputs) for chunk rows q (n x groups*queries x d)
    and k (n x keys x d); drop is (n or 1, 1, queries, keys)."""
    n, keys = k.shape[0], k.shape[1]
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)  # eager attention's products and scaling
    scores.view(n, -1, drop.shape[-2], keys).masked_fill_(drop, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1, dtype=torch.promote_types(scores.dtype, torch.float32))


def query_rows(t, kv_heads: int):
    """(batch, heads, L, d) -> (batch * kv heads, groups * L, d): the query heads that share a key
    head (transformers' repeat_kv order) become more rows of one product with that key."""
    batch, heads, length, dim = t.shape
    return t.reshape(batch * kv_heads, heads // kv_heads * length, dim)


def kv_rows(t):
    return t.reshape(-1, t.shape[2], t.shape[3])


def attention_forward(query, key, value, drop, scale: float):
    kv = key.shape[1]
    q, k, v = query_rows(query, kv), kv_rows(key), kv_rows(value)
    out = torch.empty_like(q)
    step = rows_per_chunk(query.shape[1] // kv, query.shape[2], key.shape[2])
    for start in range(0, q.shape[0], step):
        rows = slice(start, start + step)
        probs = probabilities(q[rows], k[rows], chunk_mask(drop, rows, kv), scale)
        torch.bmm(probs.to(q.dtype), v[rows], out=out[rows])
    return out.view(query.shape)


def attention_backward(grad, query, key, value, drop, out, scale: float):
    kv = key.shape[1]
    q, k, v, g, o = query_rows(query, kv), kv_rows(key), kv_rows(value), query_rows(grad, kv), query_rows(out, kv)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    step = rows_per_chunk(query.shape[1] // kv, query.shape[2], key.shape[2])
    for start in range(0, q.shape[0], step):
        rows = slice(start, start + step)
        probs = probabilities(q[rows], k[rows], chunk_mask(drop, rows, kv), scale)
        torch.bmm(probs.to(g.dtype).transpose(1, 2), g[rows], out=dv[rows])
        # softmax's backward: p * (dp - sum(dp * p)), with sum(dp * p) = sum(grad * out) row by row
        row_dot = (g[rows].to(probs.dtype) * o[rows]).sum(-1, keepdim=True)
        dp = torch.bmm(g[rows], v[rows].transpose(1, 2))
        dscores = probs.mul_(dp.sub(row_dot)).mul_(scale).to(g.dtype)
        torch.bmm(dscores, k[rows], out=dq[rows])
        torch.bmm(dscores.transpose(1, 2), q[rows], out=dk[rows])
    return dq.view(query.shape), dk.view(key.shape), dv.view(value.shape)


class ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, drop, scale: float):
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        out = attention_forward(query, key, value, drop, scale)
        ctx.save_for_backward(query, key, value, drop, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, drop, out = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):  # a backward called under autocast
            grads = attention_backward(grad.contiguous().to(out.dtype), query, key, value, drop, out, ctx.scale)
        return (*grads, None, None)


def use_chunked_attention(model) -> bool:
    """Switch a model that attends with sdpa to chunked_or_sdpa; models on other attention keep it."""
    return switch_sdpa(model, NAME, chunked_or_sdpa)
