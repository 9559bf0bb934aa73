"""A batch's common prompt computed once (tasks/prompt_once.py) against every row computing it: ms
per training step (forward, loss, backward) of SmolLM2 with LoRA r=8 on all linear layers (no
dropout), bf16, on batches of one prompt and rows of their own tokens after it.

    .venv/bin/python bench/prompt_once.py [--shapes 16x16+33,...] [--rounds 5]

A shape is ROWSxPROMPT+OWN[:sft]: ROWS rows of PROMPT common tokens and OWN tokens each of their
own; the loss is on the last token (label words) or, with :sft, on the second half of the row's own
tokens. Both variants run in one process, their steps interleaved, on the attention lmtune trains
with (eager for the demo's config, chunked otherwise: --attention). Prints each variant's ms per
step and the prompt-once speed; the prompt's own pass is what decides MIN_SAVED_TOKENS.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmtune.data.tokenize import IGNORE  # noqa: E402
from lmtune.tasks import prompt_once  # noqa: E402
from lmtune.tasks.base import target_loss  # noqa: E402

SHAPES = "16x16+33,16x8+33,16x4+33,16x64+33,8x16+33,4x16+33,2x16+33,8x24+180:sft"


def build(attention: str):
    from transformers import AutoModelForCausalLM

    from lmtune.config import LoraMethod, ModelConfig
    from lmtune.model.chunked_attention import use_chunked_attention
    from lmtune.model.load import resolve_model_path
    from lmtune.training.prepare import apply_method

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(ModelConfig()), dtype=torch.bfloat16,
                                                 attn_implementation="sdpa" if attention == "chunked" else attention)
    if attention == "chunked":
        use_chunked_attention(model)
    model = apply_method(LoraMethod(r=8, alpha=32, dropout=0.0, target_modules="all-linear"), model, None)
    return model.train()


def batch(shape: str) -> dict[str, torch.Tensor]:
    size, _, kind = shape.partition(":")
    rows, lengths = size.split("x")
    rows, (prompt, own) = int(rows), map(int, lengths.split("+"))
    ids = torch.randint(100, 49152, (rows, prompt + own))
    ids[:, :prompt] = ids[0, :prompt]
    labels = torch.full_like(ids, IGNORE)
    answer = own // 2 if kind == "sft" else 1
    labels[:, -answer:] = ids[:, -answer:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def step(model, inputs, share: bool) -> float:
    prompt_once.MIN_SAVED_TOKENS = 1 if share else 10**9
    start = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16):
        loss, count = target_loss(model, inputs)
    (loss / count).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--attention", default="eager", choices=["eager", "chunked", "sdpa"])
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.attention)
    print(f"attention: {args.attention}\n\n| rows x prompt + own | every row, ms | prompt once, ms | speed |\n"
          "| --- | ---: | ---: | ---: |", flush=True)
    for shape in args.shapes.split(","):
        inputs = batch(shape)
        for share in (False, True, False, True):  # warm-up
            step(model, inputs, share)
        times = {False: [], True: []}
        for _ in range(args.rounds):
            for share in (False, True):
                times[share].append(step(model, inputs, share))
        plain, once = (1000 * sorted(times[s])[len(times[s]) // 2] for s in (False, True))
        print(f"| {shape} | {plain:.0f} | {once:.0f} | {plain / once:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
