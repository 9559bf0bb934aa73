"""GGUF export: a tiny LoRA run merged and written as GGUF reads back through transformers with the
merged model's logits and the tokenizer's ids; the file holds the chat template and the stop
tokens; quantised files stay close; what cannot be exported is refused in one line; a failed
export leaves nothing under its name."""

import pytest
import torch

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.errors import ConfigError
from lmtune.training.run import train

from conftest import DATA

TEXTS = ["a fine film", "Hello there, a film about 2024 things.", "What is 12 + 30?\n\nIt is 42!"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("gguf") / "run"
    train(load_config(None, [
        f"model.name={tiny_llama}", f"data.train={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}",
        "data.format=instruction", "task.name=sft", "data.max_samples=16", "data.max_length=64", "train.lr=1e-2",
        "train.max_steps=2", "train.precision=fp32", "train.zero_shot_eval=false", "data.system_prompt=Be brief.",
        f"output.dir={out}"]), reporters=[])
    return out


def read_back(out, quant="f32"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = next(out.glob(f"*.{quant}.gguf")).name
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(out, gguf_file=name)


def merged_model(run_dir):
    from lmtune.loading import load_for_inference

    loaded = load_for_inference(run_dir, quantized=False, dtype=torch.float32)
    return loaded.model.merge_and_unload().eval(), loaded.tokenizer


def test_a_lora_run_exports_to_gguf_with_the_merged_logits_and_the_same_token_ids(run_dir, tmp_path):
    import gguf

    out = tmp_path / "gguf"
    assert main(["export", str(run_dir), str(out), "--format", "gguf", "--quant", "f32"]) == 0
    model, tokenizer = read_back(out)
    merged, own_tokenizer = merged_model(run_dir)
    for text in TEXTS:
        ids = own_tokenizer(text)["input_ids"]
        assert tokenizer(text)["input_ids"] == ids
        with torch.no_grad():
            torch.testing.assert_close(model(torch.tensor([ids])).logits, merged(torch.tensor([ids])).logits, atol=1e-4, rtol=1e-4)
    reader = gguf.GGUFReader(next(out.glob("*.gguf")))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith(("tokenizer.", "general.architecture"))
              and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.chat_template"] == own_tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == own_tokenizer.convert_tokens_to_ids("<|im_end|>")
    modelfile = (out / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert 'SYSTEM """Be brief."""' in modelfile  # the system prompt the run was trained with
    card = (out / "README.md").read_text()
    assert "ollama create" in card and "llama-cli" in card and "`lora`" in card


@pytest.mark.parametrize("quant, tolerance", [("f16", 5e-3), ("bf16", 3e-2), ("q8_0", 3e-2), ("q4_0", 0.3)])
def test_quantised_files_stay_close_to_the_model(tiny_llama, tmp_path, quant, tolerance):
    from transformers import AutoModelForCausalLM

    out = tmp_path / quant
    assert main(["export", str(tiny_llama), str(out), "--format", "gguf", "--quant", quant]) == 0
    model, tokenizer = read_back(out, quant)
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(" ".join(TEXTS))["input_ids"]])
    with torch.no_grad():
        difference = (model(ids).logits - reference(ids).logits).abs().max().item()
    assert 0 < difference < tolerance, difference


def test_qwen2_keeps_its_rotation_and_biases(tmp_path, llama_tokenizer):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=len(llama_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    for layer in model.model.layers:  # biases that are not zero, so that a lost or misplaced one shows
        torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
        torch.nn.init.normal_(layer.self_attn.k_proj.bias, std=0.5)
    src = tmp_path / "qwen2"
    model.save_pretrained(src)
    llama_tokenizer.save_pretrained(src)
    assert main(["export", str(src), str(tmp_path / "out"), "--format", "gguf", "--quant", "f32"]) == 0
    back, _ = read_back(tmp_path / "out")
    ids = torch.tensor([llama_tokenizer(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)


def test_what_cannot_be_exported_is_one_line(tmp_path, tiny_gpt2, tiny_llama, capsys, monkeypatch):
    assert main(["export", str(tiny_gpt2), str(tmp_path / "a"), "--format", "gguf"]) == 2
    assert "GGUF export supports llama, mistral, qwen2 models; this one is 'gpt2'" in capsys.readouterr().err
    assert main(["export", str(tiny_llama), str(tmp_path / "b"), "--format", "gguf", "--adapter"]) == 2
    assert "--adapter keeps a LoRA run's adapter apart from its base" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert main(["export", str(tiny_llama), str(busy), "--format", "gguf"]) == 2
    assert "is not empty" in capsys.readouterr().err

    import lmtune.export.gguf_export as gguf_export

    def broken(array, kind):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_export, "quantize", broken)
    out = tmp_path / "killed"
    assert main(["export", str(tiny_llama), str(out), "--format", "gguf"]) == 2
    assert "cannot write (No space left on device)" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".killed*"))  # nothing half-written under any name


def test_prompt_methods_are_refused_with_the_alternative(tmp_path, tiny_llama):
    from lmtune.export.gguf_export import export_gguf

    out = tmp_path / "run"
    train(load_config(None, [
        f"model.name={tiny_llama}", f"data.train={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}", "method.name=prompt_tuning",
        "data.format=instruction", "task.name=sft", "data.max_samples=8", "data.max_length=64", "train.max_steps=1",
        "train.precision=fp32", "train.zero_shot_eval=false", f"output.dir={out}"]), reporters=[])
    with pytest.raises(ConfigError, match="virtual tokens, which a GGUF model cannot hold; serve the run directory"):
        export_gguf(out, tmp_path / "gguf")


def test_k_quants_without_llama_cpp_say_what_to_run(tiny_llama, tmp_path, capsys, monkeypatch):
    import lmtune.export.k_quants as k_quants

    monkeypatch.setattr(k_quants.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(k_quants.shutil, "which", lambda name: None)
    assert main(["export", str(tiny_llama), str(tmp_path / "k"), "--format", "gguf", "--quant", "q4_k_m"]) == 2
    err = capsys.readouterr().err
    assert "needs its quantizer" in err and "llama-quantize" in err and "Q4_K_M" in err
    assert not (tmp_path / "k").exists()  # refused before anything was written
