"""GGUF export of a fine-tuned run, checked: time and size of each quantisation beside the merged
safetensors, transformers reading each file back (logits of f32, next-token agreement of the
others over real prompts), and llama.cpp itself (llama-cpp-python) tokenising, templating and
answering the run's validation reviews as the merged model does in transformers.

    .venv/bin/python bench/gguf_check.py RUN_DIR [--reviews 200] [--prompts 50]

RUN_DIR: a label-word sentiment run such as `make demo`'s (configs/sentiment_lora.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUANTS = ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
LLAMA_CPP_QUANTS = ["f16", "q8_0", "q4_0"]


def reviews(cfg, n: int) -> list[dict]:
    lines = Path(cfg.data.validation).read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line) for line in lines]


def prompt_ids(cfg, tokenizer, renderer, row) -> list[int]:
    messages = ([{"role": "system", "content": cfg.data.system_prompt}] if cfg.data.system_prompt else []) + [
        {"role": "user", "content": (cfg.data.prompt or "{text}").format(**row)}]
    return tokenizer(renderer.prompt(messages), add_special_tokens=False)["input_ids"]


def label_of(text: str, labels: list[str]) -> str | None:
    found = [label for label in labels if label in text.lower()]
    return found[0] if len(found) == 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--reviews", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.data.templates import Renderer
    from lmtune.export.gguf_export import export_gguf
    from lmtune.export.merge import merge_run
    from lmtune.run_dir import RunDir

    run = RunDir.open(args.run_dir)
    cfg = run.config()
    labels = [str(label).lower() for label in cfg.data.labels]
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        merge_run(run, tmp / "merged", "fp32")
        merge_s = time.perf_counter() - start
        merged_bytes = sum(p.stat().st_size for p in (tmp / "merged").glob("*.safetensors"))
        merged = AutoModelForCausalLM.from_pretrained(tmp / "merged", dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(tmp / "merged")
        renderer = Renderer(tokenizer, cfg.data.template)
        rows = reviews(cfg, max(args.reviews, args.prompts))
        prompts = [prompt_ids(cfg, tokenizer, renderer, row) for row in rows]
        with torch.no_grad():
            reference = [merged(torch.tensor([ids])).logits[0] for ids in prompts[: args.prompts]]
            hf_answers = [tokenizer.decode(merged.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False,
                                                           pad_token_id=tokenizer.pad_token_id)[0, len(ids):],
                                           skip_special_tokens=True) for ids in prompts[: args.reviews]]
        gold = [labels[int(row["label"])] for row in rows[: args.reviews]]
        hf_labels = [label_of(a, labels) for a in hf_answers]
        lines = [f"run {args.run_dir}: merge {merge_s:.1f} s, merged fp32 safetensors {merged_bytes / 2**20:,.1f} MiB; "
                 f"transformers (merged, greedy) accuracy on {args.reviews} reviews "
                 f"{sum(h == g for h, g in zip(hf_labels, gold)) / len(gold):.3f}", "",
                 "| quant | export s | size MiB | max abs logit diff | next-token agreement | llama.cpp: same ids | "
                 "llama.cpp: template | llama.cpp: same answer | llama.cpp accuracy |",
                 "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |"]
        for quant in QUANTS:
            out = tmp / quant
            start = time.perf_counter()
            report = export_gguf(tmp / "merged", out, quant)
            export_s = time.perf_counter() - start
            name = Path(report["file"]).name
            back = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
            same = total = 0
            diff = 0.0
            with torch.no_grad():
                for ids, ref in zip(prompts[: args.prompts], reference):
                    logits = back(torch.tensor([ids])).logits[0]
                    diff = max(diff, (logits - ref).abs().max().item())
                    same += (logits.argmax(-1) == ref.argmax(-1)).sum().item()
                    total += len(ids)
            del back
            cells = [quant, f"{export_s:.1f}", f"{report['bytes'] / 2**20:,.1f}", f"{diff:.2e}", f"{same / total:.4f}"]
            cells += llama_cpp_cells(report["file"], tokenizer, rows, prompts, hf_labels, gold, labels, args.reviews) \
                if quant in LLAMA_CPP_QUANTS else ["", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        # The LoRA kept apart (--adapter): the base at q4_1 (exactly the published file), the adapter beside it.
        start = time.perf_counter()
        report = export_gguf(run, tmp / "adapter", "q4_1", adapter=True)
        export_s = time.perf_counter() - start
        size = (report["bytes"] + Path(report["adapter"]).stat().st_size) / 2**20
        cells = ["q4_1 base + LoRA (--adapter)", f"{export_s:.1f}", f"{size:,.1f}", "", ""]
        cells += llama_cpp_cells(report["file"], tokenizer, rows, prompts, hf_labels, gold, labels, args.reviews,
                                 lora_path=report["adapter"])
        lines.append("| " + " | ".join(cells) + " |")
        print("\n".join(lines), flush=True)


def llama_cpp_cells(path, tokenizer, rows, prompts, hf_labels, gold, labels, n, lora_path=None) -> list[str]:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False, seed=0, lora_path=lora_path)
    texts = [row["text"] for row in rows[:50]] + ["<|im_start|>user\n2024: ¡Olé! 12+30=42<|im_end|>\n"]
    same_ids = all(llm.tokenize(t.encode(), add_bos=False, special=True) == tokenizer(t, add_special_tokens=False)["input_ids"]
                   for t in texts)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": rows[0]["text"]}]
    template = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=tokenizer.eos_token or "",
                                   bos_token=tokenizer.bos_token or "")(messages=messages).prompt
    same_template = template == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answers = [label_of(llm.create_completion(ids, max_tokens=3, temperature=0.0)["choices"][0]["text"], labels)
               for ids in prompts[:n]]
    named = [(h, a) for h, a in zip(hf_labels, answers) if h]
    agree = sum(h == a for h, a in named) / max(len(named), 1)
    accuracy = sum(a == g for a, g in zip(answers, gold)) / len(gold)
    llm.close()
    return ["yes" if same_ids else "NO", "yes" if same_template else "NO", f"{agree:.3f} of {len(named)}", f"{accuracy:.3f}"]


if __name__ == "__main__":
    main()
