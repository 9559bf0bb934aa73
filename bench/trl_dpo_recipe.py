"""TRL's DPOTrainer with peft LoRA, written as TRL's documentation does it: the reference side of
bench/dpo_vs_trl.py. Trains on a JSONL of conversational pairs and writes the adapter and
result.json (train time, real tokens, pairs, peak RSS) to --out.

    python bench/trl_dpo_recipe.py --train pairs.jsonl --out DIR --model MODEL_DIR [--max-length 384] ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.train, split="train")
    config = DPOConfig(
        output_dir=str(Path(args.out) / "trainer"), beta=args.beta, loss_type="sigmoid", max_length=args.max_length,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        num_train_epochs=1, warmup_steps=0.1, lr_scheduler_type="linear", bf16=True, use_cpu=not torch.cuda.is_available(),
        logging_steps=5, save_strategy="no", report_to="none", seed=args.seed, dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    # Real tokens trained on: every non-padding token of prompt + chosen and prompt + rejected, as TRL tokenised them
    # (after its truncation to max_length).
    data = trainer.train_dataset
    tokens = sum(min(len(p) + len(c), args.max_length) + min(len(p) + len(r), args.max_length)
                 for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"]))
    start = time.perf_counter()
    trainer.train()
    runtime = time.perf_counter() - start
    out = Path(args.out)
    trainer.model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    result = {"runtime_s": runtime, "tokens": tokens, "pairs": len(data),
              "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
