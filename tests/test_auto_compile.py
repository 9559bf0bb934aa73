"""train.compile=auto (training/auto_compile.py): eager until it has timed some steps, then compiled
only when the steps left win the compile time back; the decision is an event and in metrics.json."""

import json

import pytest
import torch

import lmtune.training.auto_compile as auto_compile
from lmtune.config import load_config
from lmtune.errors import ConfigError
from lmtune.training.run import train

from conftest import ALPACA, FAST


EAGER = ["model.attn_implementation=eager"]  # auto leaves runs on lmtune's chunked attention eager


def run_steps(tmp_path, tiny_llama, steps: int):
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *ALPACA, *FAST, f"train.max_steps={steps}",
                             "train.zero_shot_eval=false", "train.logging_steps=100", *EAGER])
    result = train(cfg, reporters=[])
    decisions = [e for e in map(json.loads, (out / "events.jsonl").read_text().splitlines()) if e["event"] == "auto_compile"]
    compiled = [b._compiled_call_impl is not None for b in result.model.get_base_model().model.layers]
    return result.metrics["train"], decisions, compiled


def test_a_short_run_stays_eager(tmp_path, tiny_llama):
    metrics, decisions, compiled = run_steps(tmp_path, tiny_llama, 12)
    assert [(d["step"], d["steps_left"], d["compiled"], d["cost_s"]) for d in decisions] == [(10, 2, False, 80.0)]
    assert metrics["compiled_from_step"] is None and not any(compiled)


def test_a_run_that_wins_the_cost_back_compiles_part_way(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setattr(auto_compile, "COST_S", {True: 0.0, False: 0.0})  # a tiny model's steps save little: make it pay
    metrics, decisions, compiled = run_steps(tmp_path, tiny_llama, 13)
    torch._dynamo.reset()  # leave no compiled code for later tests of this process to reuse
    assert [(d["step"], d["steps_left"], d["compiled"]) for d in decisions] == [(10, 3, True)]
    assert metrics["compiled_from_step"] == 10 and all(compiled) and metrics["steps"] == 13
    # Two compiled steps ran: the next run of these shapes counts on the warm cache's cost.
    assert any((auto_compile.inductor_cache_dir() / "warm").iterdir())


def test_auto_only_where_it_was_measured():
    cpu = torch.device("cpu")
    assert auto_compile.why_not_auto(load_config(None, EAGER), cpu, 1) is None
    assert load_config(None, []).train.compile == "auto"
    refused = {"measured on CPUs only": (EAGER, torch.device("meta"), 1), "one process only": (EAGER, cpu, 2),
               "plain LoRA only": (["method.name=full"], cpu, 1), "not with gradient checkpointing":
               (["train.gradient_checkpointing=true", *EAGER], cpu, 1),
               "not with packing": (["data.packing=true", *EAGER], cpu, 1),
               "not with lmtune's chunked attention (model.attn_implementation unset)": ([], cpu, 1),
               "the batches' common prompt is computed once (tasks/prompt_once.py), which compiled blocks would stop":
               (["method.dropout=0", *EAGER], cpu, 1)}
    for why, (overrides, device, world) in refused.items():
        assert auto_compile.why_not_auto(load_config(None, overrides), device, world) == why
    assert auto_compile.why_not_auto(load_config(None, ["method.name=dora"]), cpu, 1) == "plain LoRA only"
    assert [load_config(None, [f"train.compile={v}"]).train.compile for v in ("true", "false", "auto")] == [True, False, "auto"]
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, ["train.compile=sometimes"])


def test_the_web_form_offers_every_value():
    from lmtune.sections import TrainConfig
    from lmtune.ui.config_form import choices_of

    assert choices_of("train", "compile", TrainConfig.model_fields["compile"].annotation) == ["auto", "true", "false"]
