"""`lmtune plan`: parameters, memory and time from the config alone, for tiny and huge models."""

import time

import pytest
from transformers import LlamaConfig

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.plan.command import plan
from lmtune.plan.estimate import GB, NF4_BYTES
from lmtune.plan.shape import model_shape

from conftest import SENTIMENT

LLAMA3 = {  # Llama-3 8B and 70B shapes (published configs)
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


@pytest.mark.parametrize("size, billions", [("8b", 8.03), ("70b", 70.55)])
def test_huge_configs_are_planned_in_seconds_and_match_the_rules_of_thumb(size, billions):
    config = LlamaConfig(**LLAMA3[size])
    start = time.perf_counter()
    lora, qlora = (plan(load_config(None, [f"method.name={m}", "train.batch_size=1", "data.max_length=512"]),
                        config=config, throughput=100_000, measure_rate=False)[0] for m in ("lora", "qlora"))
    assert time.perf_counter() - start < 60
    assert lora.total / 1e9 == pytest.approx(billions, rel=0.01)
    # 16-bit LoRA: about 2 bytes per parameter for the weights.
    assert 2.0 <= lora.memory.weights / lora.total <= 2.05
    # QLoRA: about half a byte per parameter for the 4-bit blocks; the embeddings and LM head stay 16-bit.
    shape = model_shape(config)
    assert 0.5 <= NF4_BYTES[True] <= 0.6
    per_param = qlora.memory.weights / qlora.total
    assert 0.5 <= per_param <= (0.6 if size == "70b" else 0.75), per_param
    assert qlora.memory.weights < lora.memory.weights / 2.5
    assert lora.trainable == qlora.trainable > 0 and shape.layers == LLAMA3[size]["num_hidden_layers"]


def test_compare_orders_methods_by_what_they_train_and_hold(tiny_llama, capsys):
    cfg = load_config(None, [f"model.name={tiny_llama}", *SENTIMENT, "train.batch_size=4"])
    plans = {p.method: p for p in plan(cfg, compare=True, throughput=10)}
    assert set(plans) >= {"full", "lora", "qlora", "prompt_tuning", "prefix_tuning"}
    assert plans["full"].trainable == plans["full"].total
    assert plans["lora"].trainable < plans["full"].trainable
    assert plans["full"].memory.optimizer == plans["full"].trainable * 8  # two AdamW moments in fp32
    static = lambda m: m.weights + m.gradients + m.optimizer  # noqa: E731
    assert static(plans["full"].memory) > 3 * static(plans["lora"].memory)
    # LoRA keeps each adapted layer's input again (and a dropout mask): more activation memory than full.
    assert plans["lora"].memory.activations > plans["full"].memory.activations
    for p in plans.values():
        assert p.memory_checkpointed.activations <= p.memory.activations
        assert p.steps_per_epoch == 16 and p.seconds_per_epoch > 0  # 64 rows / batch 4
    out = capsys.readouterr().out
    assert "prompt_tuning" in out and "time / epoch" in out


def test_plan_without_a_config_and_advice_when_it_does_not_fit(tmp_path, capsys, monkeypatch):
    import lmtune.plan.command as command

    monkeypatch.setattr(command, "available_memory", lambda device: (1 * GB, "available RAM"))
    config = tmp_path / "config.json"
    config.write_text(LlamaConfig(**LLAMA3["8b"]).to_json_string())
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", lambda *a, **k: LlamaConfig(**LLAMA3["8b"]))
    monkeypatch.setattr("lmtune.model.load.resolve_model_path", lambda cfg: str(tmp_path))
    monkeypatch.setattr("lmtune.model.load.load_tokenizer", lambda path, cfg: None)
    assert main(["plan", "--model", "llama-3-8b", "--method", "full", "--batch-size", "8", "--max-length", "1024",
                 "--throughput", "1000"]) == 0
    out = capsys.readouterr().out
    assert "does not fit" in out and "nothing short of a larger machine" in out
