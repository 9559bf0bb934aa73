"""Greedy generation from SmolLM2 with a LoRA adapter: peft's LoRA forward against lmtune's
(methods/fused_lora.py, which reloaded runs use), both models in one process, their calls interleaved.

    .venv/bin/python bench/generation_lora.py [--tokens 48] [--rounds 8]

The adapter is r=8 / alpha=32 on every linear layer, B drawn small and non-zero as after training.
The prompt is 40 random tokens, batch 1, bf16 under autocast, the KV cache on, chunked attention as
lmtune loads it. Prints the median time of --rounds generations after one warm-up round, and whether
the two paths chose the same tokens.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmtune.config import ModelConfig
    from lmtune.methods.fused_lora import use_fused_lora
    from lmtune.model.chunked_attention import use_chunked_attention
    from lmtune.model.load import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(ModelConfig()), dtype=torch.bfloat16)
    use_chunked_attention(base)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear"))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    peft_model.eval()
    fused = copy.deepcopy(peft_model)
    use_fused_lora(fused)
    models = {"peft's LoRA forward": peft_model, "lmtune's": fused}
    prompt = torch.randint(0, 49152, (1, 40))
    times = {name: [] for name in models}
    outputs = {}
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        for round in range(args.rounds + 1):
            for name, model in models.items():
                start = time.perf_counter()
                outputs[name] = model.generate(input_ids=prompt, max_new_tokens=args.tokens,
                                               min_new_tokens=args.tokens, do_sample=False)
                if round > 0:
                    times[name].append(time.perf_counter() - start)
    first = None
    print(f"| LoRA forward | s for {args.tokens} tokens | relative |\n| --- | ---: | ---: |")
    for name, t in times.items():
        median = statistics.median(t)
        first = first or median
        print(f"| {name} | {median:.3f} | {median / first:.2f}x |")
    same = torch.equal(*outputs.values())
    print(f"same tokens: {same}")


if __name__ == "__main__":
    main()
