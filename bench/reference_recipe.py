"""The plain transformers + peft recipe, as the seed article writes it, for bench/vs_reference.py.

    .venv/bin/python bench/reference_recipe.py --workload classification --rows rows.jsonl --out DIR \
        --model MODEL_DIR [--max-length 128] [--batch-size 16] [--lr 3e-4] [--system PROMPT]

No lmtune code. --workload seed: the seed article's process_fn exactly (the review's tokens, EOS,
the label word, the last --max-length tokens kept). classification / sft: a chat-template prompt,
the answer after it. Then, for all: labels -100 except the answer, every
example padded to a fixed max length, DataCollatorWithPadding, the model's own loss (logits over the
whole vocabulary at every position), LoRA r=8 / alpha=32 / dropout 0.1 on q,k,v,o,gate,up,down,
fp32 weights with bf16 autocast. Writes DIR/adapter and DIR/result.json.
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments,
                          set_seed)


def classification_example(tokenizer, row, system, label_ids, max_length):
    messages = [{"role": "system", "content": system}, {"role": "user", "content": row["text"]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = (prompt + [label_ids[row["label"]]])[-max_length:]
    return ids, [-100] * (len(ids) - 1) + [ids[-1]]


def seed_example(tokenizer, row, system, label_ids, max_length):
    """The seed article's process_fn (../shared/seeds/003): the review's tokens, EOS, the label word's
    first token; the last max_length tokens kept; the loss on the label only."""
    ids = (tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id, label_ids[row["label"]]])
    ids = ids[-max_length:]
    return ids, [-100] * (len(ids) - 1) + [ids[-1]]


def sft_example(tokenizer, row, system, label_ids, max_length):
    messages = [{"role": "user", "content": row["question"]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": row["answer"]}],
                                         tokenize=True, return_dict=False)
    ids = full[:max_length]
    return ids, ([-100] * len(prompt) + full[len(prompt):])[:max_length]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=["classification", "sft", "seed"], required=True)
    p.add_argument("--rows", required=True, help="JSONL training rows")
    p.add_argument("--out", required=True)
    p.add_argument("--model", required=True, help="a Hugging Face model directory")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.05)
    p.add_argument("--system", default="Is this movie review positive or negative?")
    p.add_argument("--labels", default="negative,positive")
    p.add_argument("--seed", type=int, default=42, help="the Trainer's seed (LoRA init, dropout, row order)")
    a = p.parse_args()
    out = Path(a.out)

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    label_ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in a.labels.split(",")]
    make = {"classification": classification_example, "sft": sft_example, "seed": seed_example}[a.workload]
    columns = {"input_ids": [], "attention_mask": [], "labels": []}
    unpadded = []  # (ids, labels) per row, for the token-for-token check
    real_tokens = targets = 0
    for line in Path(a.rows).read_text(encoding="utf-8").splitlines():
        ids, labels = make(tokenizer, json.loads(line), a.system, label_ids, a.max_length)
        pad = a.max_length - len(ids)  # every example padded to the fixed max length
        columns["input_ids"].append(ids + [tokenizer.pad_token_id] * pad)
        columns["attention_mask"].append([1] * len(ids) + [0] * pad)
        columns["labels"].append(labels + [-100] * pad)
        unpadded.append([ids, labels])
        real_tokens += len(ids)
        targets += sum(l != -100 for l in labels)
    dataset = Dataset.from_dict(columns)

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    # The Trainer seeds only when it is built, after the adapter exists: without this the LoRA
    # initialisation came from torch's fixed default seed, the same in every run whatever --seed.
    # Seeded here, it is drawn as lmtune draws it (set_seed(train.seed), then get_peft_model).
    set_seed(a.seed)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.1,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"]))
    args = TrainingArguments(output_dir=str(out / "checkpoints"), per_device_train_batch_size=a.batch_size,
                             num_train_epochs=1, learning_rate=a.lr, warmup_steps=a.warmup_ratio,  # a float < 1 is a ratio
                             lr_scheduler_type="linear", logging_steps=10, save_strategy="no", bf16=True,
                             use_cpu=not torch.cuda.is_available(), report_to="none", seed=a.seed)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorWithPadding(tokenizer, return_tensors="pt"))
    result = trainer.train()
    (out / "ids.json").write_text(json.dumps(unpadded))
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    (out / "result.json").write_text(json.dumps({
        "runtime_s": result.metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "samples": len(dataset),
        "tokens": real_tokens,
        "padded_tokens": len(dataset) * a.max_length,
        "targets": targets,
        "train_loss": result.metrics["train_loss"],
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }, indent=2))


if __name__ == "__main__":
    main()
