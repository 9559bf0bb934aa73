"""`lmtune generate`: answer a prompt with a trained run, rendered as in training."""

from __future__ import annotations

import torch

from lmtune.data.templates import Renderer
from lmtune.data.tokenize import bos_prefix
from lmtune.tasks.base import autocast, model_device


def generate(model, tokenizer, renderer: Renderer, prompt: str, system: str | None = None,
             max_new_tokens: int = 128, temperature: float = 0.0, precision: str = "fp32") -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    ids = bos_prefix(tokenizer, renderer) + tokenizer(renderer.prompt(messages), add_special_tokens=False)["input_ids"]
    device = model_device(model)
    input_ids = torch.tensor([ids], device=device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode(), autocast(device, precision):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
