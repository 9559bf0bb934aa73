"""Chunked attention gives transformers' eager attention's outputs and gradients, whatever the
chunking, with grouped-query heads, padding masks and no mask (causal)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmtune.model import chunked_attention as module
from lmtune.model.chunked_attention import NAME, ChunkedAttention, use_chunked_attention


def eager(query, key, value, keep, scale):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(2, 3) * scale
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype) @ value


def inputs(batch=3, heads=6, kv_heads=2, length=7, dim=4, dtype=torch.float64):
    torch.manual_seed(0)
    q = torch.randn(batch, heads, length, dim, dtype=dtype)
    k, v = (torch.randn(batch, kv_heads, length, dim, dtype=dtype) for _ in range(2))
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    lengths = torch.tensor([length, length - 2, 3])[:batch]  # right padding
    keep = causal & (torch.arange(length) < lengths[:, None])[:, None, :]
    keep[1, -2:] = causal[-2:]  # padded queries still see something (transformers' sdpa mask does the same)
    return q, k, v, keep[:, None]


def gradients(fn, q, k, v):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape))
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("chunk_bytes", [4 << 20, 1], ids=["one_chunk", "one_row_per_chunk"])
@pytest.mark.parametrize("masked", [True, False], ids=["padding_mask", "causal"])
def test_matches_eager_attention(chunk_bytes, masked, monkeypatch):
    monkeypatch.setattr(module, "CHUNK_BYTES", chunk_bytes)
    q, k, v, keep = inputs()
    if not masked:
        keep = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    drop = ~keep[:, 0]  # per batch row, or one causal mask for all
    mine = gradients(lambda *t: ChunkedAttention.apply(*t, drop, 0.5), q, k, v)
    theirs = gradients(lambda *t: eager(*t, keep, 0.5), q, k, v)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda *t: ChunkedAttention.apply(*t, drop, 0.5),
                                    tuple(t.clone().requires_grad_() for t in (q, k, v)))


@pytest.mark.parametrize("chunk_bytes", [4 << 20, 1], ids=["one_chunk", "one_row_per_chunk"])
@pytest.mark.parametrize("masked", [True, False], ids=["padding_mask", "causal"])
def test_queries_after_cached_keys(chunk_bytes, masked, monkeypatch):
    """4 queries after 5 cached positions (a batch's prompt computed once): each query sees the
    cache and the queries up to itself, as in eager attention."""
    monkeypatch.setattr(module, "CHUNK_BYTES", chunk_bytes)
    q, k, v, _ = inputs(length=9)
    q = q[:, :, 5:]
    keep = torch.ones(4, 9, dtype=torch.bool).tril(5)[None, None].repeat(3, 1, 1, 1)
    if masked:
        keep[2, :, :, 7:] = False  # the last row's last two tokens are padding
        keep[2, :, 2:, 7:] = torch.eye(2, dtype=torch.bool)  # padded queries still see something
    drop = ~keep[:, 0] if masked else torch.ones(1, 4, 9, dtype=torch.bool).triu_(6)
    mine = gradients(lambda *t: ChunkedAttention.apply(*t, drop, 0.5), q, k, v)
    theirs = gradients(lambda *t: eager(*t, keep, 0.5), q, k, v)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)
    if not masked:  # what the attention interface builds when transformers passes no mask
        out, _ = module.chunked_or_sdpa(torch.nn.Module(), q.float(), k.float(), v.float(), None, scaling=0.5)
        torch.testing.assert_close(out.transpose(1, 2), theirs[0].float())


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def test_a_model_switched_to_it_trains_as_with_eager_attention():
    """Padded rows: the same logits at the real tokens and the same gradients for every weight."""
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = mask[2, 4:] = 0
    results = []
    for switch in (lambda m: m.set_attn_implementation("eager"), use_chunked_attention):
        model = tiny_llama()
        switch(model)
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].square().sum().backward()
        results.append((logits[mask.bool()].detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert results[1][0].shape == results[0][0].shape
    torch.testing.assert_close(results[1][0], results[0][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


def test_under_autocast_as_full_fine_tuning_runs():
    """fp32 weights under bf16 autocast (q, k, v in mixed dtypes): eager attention's result, to bf16."""
    ids = torch.randint(1, 50, (2, 9))
    results = []
    for switch in (lambda m: m.set_attn_implementation("eager"), use_chunked_attention):
        model = tiny_llama()
        switch(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        results.append((logits.float().detach(), model.model.layers[0].self_attn.q_proj.weight.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=0.05, rtol=0.05)
    torch.testing.assert_close(results[1][1], results[0][1], atol=0.05, rtol=0.1)


def test_falls_back_to_sdpa_where_it_does_not_apply(monkeypatch):
    """Generation with a cache (one query over many keys) goes to sdpa and still generates."""
    model = tiny_llama()
    assert use_chunked_attention(model) and model.config._attn_implementation == NAME
    calls = []
    monkeypatch.setattr(ChunkedAttention, "apply", lambda *a, f=ChunkedAttention.apply: calls.append(1) or f(*a))
    ids = torch.randint(1, 50, (1, 5))
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    reference = tiny_llama()
    reference.set_attn_implementation("eager")
    assert torch.equal(out, reference.generate(ids, max_new_tokens=3, do_sample=False))
    assert len(calls) == 2  # the prompt's pass, in both blocks; the new tokens' passes went to sdpa
