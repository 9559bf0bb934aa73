"""A batch's common prompt computed once gives every row the logits and gradients of the plain
forward, on Llama and GPT-2 with each attention; the lever stays off wherever it would change the
computation (per-row noise, packing, prompt learning, too little to save)."""

import random

import pytest
import torch

from lmtune.data.collate import PadCollator
from lmtune.data.tokenize import IGNORE
from lmtune.tasks import prompt_once
from lmtune.tasks.base import target_logits
from lmtune.tasks.prompt_once import common_prompt_length, prompt_once_length


def rows(vocab: int, prompt: int = 9, count: int = 5, seed: int = 0) -> list[dict]:
    """Rows of one prompt, then 2-7 tokens of their own, the last one or two of them targets."""
    rng = random.Random(seed)
    shared = [rng.randrange(1, vocab) for _ in range(prompt)]
    out = []
    for i in range(count):
        own = [rng.randrange(1, vocab) for _ in range(rng.randint(2, 7))]
        answer = 1 + i % 2
        out.append({"input_ids": shared + own, "labels": [IGNORE] * (prompt + len(own) - answer) + own[-answer:]})
    return out


def logits_and_gradients(model, batch, share: bool, monkeypatch):
    monkeypatch.setattr(prompt_once, "MIN_SAVED_TOKENS", 1 if share else 10**9)
    calls = []
    original = prompt_once.prompt_once_logits
    monkeypatch.setattr("lmtune.tasks.base.prompt_once_logits", lambda *a: calls.append(a[-1]) or original(*a))
    model.zero_grad()
    logits, targets = target_logits(model, batch)
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    assert bool(calls) == share
    return logits.detach(), targets, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family,attention", [("llama", "eager"), ("llama", "sdpa"), ("llama", None),
                                              ("gpt2", "eager"), ("gpt2", "sdpa")])
def test_the_prompt_once_gives_the_plain_logits_and_gradients(family, attention, tiny_llama, tiny_gpt2, monkeypatch):
    from transformers import AutoModelForCausalLM

    from lmtune.model.chunked_attention import ChunkedAttention, use_chunked_attention

    path = tiny_llama if family == "llama" else tiny_gpt2
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention or "sdpa")
    after_cache = []
    if attention is None:  # lmtune's own attention on a CPU, which takes queries after cached keys too
        assert use_chunked_attention(model)
        apply = ChunkedAttention.apply
        monkeypatch.setattr(ChunkedAttention, "apply",
                            lambda q, k, *a: after_cache.append(k.shape[2] > q.shape[2]) or apply(q, k, *a))
    model.eval()  # GPT-2's dropout layers: the plain path draws no noise either
    batch = PadCollator(0)(rows(model.config.vocab_size))
    plain = logits_and_gradients(model, batch, False, monkeypatch)
    shared = logits_and_gradients(model, batch, True, monkeypatch)
    torch.testing.assert_close(shared[0], plain[0], atol=1e-5, rtol=1e-5)
    assert shared[1].tolist() == plain[1].tolist()
    assert shared[2].keys() == plain[2].keys()
    for name, grad in plain[2].items():
        torch.testing.assert_close(shared[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert any(after_cache) == (attention is None)


def test_lora_in_bf16_trains_the_same_adapter(tiny_llama, monkeypatch):
    """The demo's path: LoRA without dropout through lmtune's fused layers, bf16 weights; the
    adapter's gradients agree to bf16 rounding."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmtune.methods.fused_lora import use_fused_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                             init_lora_weights=False))
    assert use_fused_lora(model) > 0
    model.train()
    batch = PadCollator(0)(rows(model.config.vocab_size, prompt=12, count=8))
    plain = logits_and_gradients(model, batch, False, monkeypatch)
    shared = logits_and_gradients(model, batch, True, monkeypatch)
    torch.testing.assert_close(shared[0], plain[0], atol=0.05, rtol=0.02)
    for name, grad in plain[2].items():
        scale = grad.abs().max()
        assert (shared[2][name] - grad).abs().max() <= 0.02 * scale, name


def test_the_common_prompt():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 0], [5, 6, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    none = torch.zeros_like(ids, dtype=torch.bool)
    assert common_prompt_length(ids, mask, none) == 2
    assert common_prompt_length(ids[:2], mask[:2], none) == 3
    assert common_prompt_length(ids[:1], mask[:1], none) == 0  # one row: nothing to share
    early = none.clone()
    early[1, 1] = True  # position 1 predicts a target: the prompt ends before it
    assert common_prompt_length(ids, mask, early) == 1
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert common_prompt_length(same, torch.ones_like(same), none[:2, :3]) == 2  # each row keeps a token


def test_off_where_it_would_change_the_computation(tiny_llama, monkeypatch):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(prompt_once, "MIN_SAVED_TOKENS", 1)
    batch = PadCollator(0)(rows(100))
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = batch["labels"][:, 1:] != IGNORE

    def base():
        return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)

    model = base().train()
    assert prompt_once_length(model, kwargs, keep) == 9
    assert prompt_once_length(model, {**kwargs, "position_ids": batch["input_ids"]}, keep) == 0  # packed rows
    monkeypatch.setattr(prompt_once, "MIN_SAVED_TOKENS", 9 * 4 + 1)
    assert prompt_once_length(model, kwargs, keep) == 0  # 9 tokens x 4 more rows: too little to save
    monkeypatch.setattr(prompt_once, "MIN_SAVED_TOKENS", 1)

    dropout = get_peft_model(base(), LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.1)).train()
    assert prompt_once_length(dropout, kwargs, keep) == 0  # a mask per row
    assert prompt_once_length(dropout.eval(), kwargs, keep) == 9  # evaluation draws none

    model.get_input_embeddings().neftune_noise_alpha = 5.0  # what the Trainer sets for NEFTune
    assert prompt_once_length(model, kwargs, keep) == 0
    assert prompt_once_length(model.eval(), kwargs, keep) == 9

    checkpointing = base().train()
    checkpointing.gradient_checkpointing_enable()
    assert prompt_once_length(checkpointing, kwargs, keep) == 0

    prompt = get_peft_model(base(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert prompt_once_length(prompt.eval(), kwargs, keep) == 0

    compiled = base().eval()
    compiled.model.layers[0].compile()
    assert prompt_once_length(compiled, kwargs, keep) == 0
