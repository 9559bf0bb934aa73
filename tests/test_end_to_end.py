"""Drive the real entry points on tiny models: train a few steps, then eval and generate."""

import json
import os

import pytest
import torch

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.loading import load_for_inference
from lmtune.training.run import train

from conftest import ALPACA, DATA, FAST, SENTIMENT, write_jsonl

def cli(*args):
    return main([str(a) for a in args])


@pytest.mark.parametrize("family, task, method", [("llama", "label_tokens", "lora"), ("gpt2", "label_tokens", "full"),
                                                  ("gpt2", "sft", "lora"), ("llama", "sft", "full")])
def test_train_eval_generate_through_the_cli(tmp_path, request, capsys, family, task, method):
    model_dir = request.getfixturevalue(f"tiny_{family}")
    out = tmp_path / "run"
    data = SENTIMENT if task == "label_tokens" else ALPACA
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name: {model_dir}\nmethod:\n  name: {method}\n")
    assert cli("train", config, "--output-dir", out, *data, *FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"zero_shot", "final", "train", "saved"}
    wanted = {"accuracy", "f1", "loss"} if task == "label_tokens" else {"loss", "perplexity"}
    assert wanted <= set(metrics["final"]) and wanted <= set(metrics["zero_shot"])
    t = metrics["train"]
    assert t["steps"] == 4 and t["tokens"] > 0 and t["tokens_per_s"] > 0 and t["peak_memory_mb"] > 0
    assert t["runtime_s"] > 0 and t["samples"] == 16
    logs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logs if "loss" in l] == [1, 2, 3, 4]
    assert (out / ("adapter" if method == "lora" else "model")).is_dir()
    assert load_config(out / "config.yaml").method.name == method
    err = capsys.readouterr().err  # lmtune's bar: loss, lr and tokens/s beside it, not the Trainer's dict per log
    assert "loss=" in err and "tok_s=" in err and "{'loss'" not in err

    assert cli("eval", out, "--output", tmp_path / "eval.json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "eval.json").read_text())
    for name in wanted:  # the saved run reproduces the final metrics
        assert report[name] == pytest.approx(metrics["final"][name], rel=1e-4, abs=1e-4)

    assert cli("generate", out, "a fine film", "--max-new-tokens", 5) == 0
    assert capsys.readouterr().out.endswith("\n")  # a random tiny model may answer with EOS only


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-6), ("bf16", 0)])
def test_reloaded_adapter_gives_the_same_logits(tmp_path, tiny_llama, precision, atol):
    """In bf16 bit for bit: the reloaded adapter runs the LoRA forward the run trained and validated
    with (peft's own forward rounds differently, and `lmtune eval` disagreed with the run's final
    accuracy on rows whose label words' bf16 logits were nearly tied)."""
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'run'}", *SENTIMENT, *FAST,
                             "train.zero_shot_eval=false", f"train.precision={precision}"])
    result = train(cfg)
    x = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        trained = result.model.eval()
        expected = trained(input_ids=x.to(next(trained.parameters()).device)).logits.cpu()
        model = load_for_inference(tmp_path / "run").model
        got = model(input_ids=x.to(next(model.parameters()).device)).logits.cpu()
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "training should have moved the adapter off zero"
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=atol)  # accelerate upcasts the trained model's


def test_existing_output_dir_is_not_overwritten(tmp_path, tiny_gpt2, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {tiny_gpt2}\n")
    assert cli("train", config, "--output-dir", out, *SENTIMENT, *FAST) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "output.overwrite=true" in err and "Traceback" not in err
    assert (out / "precious.txt").read_text() == "keep me"


def test_user_errors_print_one_or_two_lines(tmp_path, tiny_gpt2, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {tiny_gpt2}\ntrain:\n  lr: 1e-3\n  epohcs: 2\n")
    assert cli("train", config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "did you mean 'epochs'" in err[0]

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok", "label": 0}, {"text": "ok", "label": 9}])
    config.write_text(f"model:\n  name: {tiny_gpt2}\n")
    assert cli("train", config, "--output-dir", tmp_path / "r2", *SENTIMENT, f"data.train={bad}", *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "bad.jsonl:2: label 9 is out of range" in err[0]

    assert cli("eval", tmp_path / "nothing-here") == 2
    assert "not an lmtune run directory" in capsys.readouterr().err


def test_unknown_lora_target_lists_the_model_modules(tmp_path, tiny_llama):
    from lmtune.errors import ConfigError

    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'run'}", *SENTIMENT, *FAST,
                             "method.target_modules=[q_proj, qkv]"])
    with pytest.raises(ConfigError, match=r"\['qkv'\] match no linear module.*q_proj.*v_proj"):
        train(cfg)


def test_evaluation_and_checkpoints_during_training(tmp_path, tiny_llama):
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *FAST,
                             "train.eval_steps=2", "train.save_steps=2", "train.zero_shot_eval=false"])
    train(cfg)
    logs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logs if "eval_accuracy" in l] == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors").is_file()


def test_p_tuning_with_an_lstm_encoder_trains(tmp_path, tiny_gpt2):
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_gpt2}", f"output.dir={out}", *SENTIMENT, *FAST, "method.name=p_tuning",
                             "method.encoder=lstm", "method.num_virtual_tokens=3", "method.encoder_hidden_size=16"])
    metrics = train(cfg).metrics
    assert metrics["train"]["steps"] == 4 and 0 < metrics["train"]["trainable_params"] < 100_000
    assert {"accuracy", "f1"} <= set(metrics["final"])


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "adagrad", "adadelta", "rmsprop", "rprop", "adafactor", "adamw_8bit"])
def test_every_optimizer_lowers_the_training_loss(tmp_path, tiny_llama, optimizer):
    extra = {"sgd": ["train.momentum=0.9", "train.nesterov=true", "train.lr=0.5"], "adadelta": ["train.lr=50"],
             "rmsprop": ["train.lr=1e-2"], "rprop": ["train.lr=1e-2"], "adagrad": ["train.lr=0.1"]}.get(optimizer, [])
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'run'}", *ALPACA, "data.max_samples=4",
                             "train.max_steps=8", "train.batch_size=4", "train.lr=5e-3", "train.precision=fp32",
                             "train.logging_steps=1", "train.zero_shot_eval=false", f"train.optimizer={optimizer}", *extra])
    train(cfg)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(losses) == 8 and losses[-1] < losses[0], losses


def test_neftune_and_optimizer_checks(tmp_path, tiny_llama):
    from lmtune.errors import ConfigError

    with pytest.raises(ConfigError, match="nesterov needs train.momentum"):
        load_config(None, ["train.optimizer=sgd", "train.nesterov=true"])
    with pytest.raises(ConfigError, match="lora_plus_ratio builds its own AdamW"):
        load_config(None, ["method.lora_plus_ratio=16", "train.optimizer=sgd"])
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'run'}", *ALPACA, *FAST,
                             "train.neftune_noise_alpha=5", "train.zero_shot_eval=false"])
    assert train(cfg).metrics["train"]["steps"] == 4


def test_compiled_blocks_train_to_the_same_adapter_as_eager(tmp_path, tiny_llama):
    from safetensors.torch import load_file

    runs = {}
    torch._dynamo.reset()  # compiled code another test left in this process would be reused: no new graphs to count
    torch._dynamo.utils.counters.clear()
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *ALPACA, *FAST,
                                 f"train.compile={str(compiled).lower()}", "train.zero_shot_eval=false"])
        result = train(cfg)
        runs[compiled] = (result.metrics, load_file(out / "adapter" / "adapter_model.safetensors"))
    blocks = result.model.get_base_model().model.layers
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # something was compiled and ran
    # LoRA (with dropout: random masks) runs inside the compiled block as one operator: no graph breaks.
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    # The compiled kernels went to lmtune's cache (keyed on the LoRA operator's version), not /tmp.
    from lmtune.training.compile import inductor_cache_dir

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor_cache_dir())
    assert any(inductor_cache_dir().iterdir())
    (eager, eager_weights), (compiled, compiled_weights) = runs[False], runs[True]
    assert eager_weights.keys() == compiled_weights.keys()  # in-place compile keeps the parameter names
    for name in eager_weights:
        torch.testing.assert_close(compiled_weights[name], eager_weights[name], atol=1e-4, rtol=1e-3, msg=lambda m: name + m)
    assert compiled["final"]["loss"] == pytest.approx(eager["final"]["loss"], rel=1e-4)


def test_eval_names_its_own_flag_for_bad_rows_and_counts_those_it_skips(tmp_path, tiny_llama, capsys):
    """The run's data.on_bad_rows cannot be set from `lmtune eval`: its hint names --skip-bad-rows."""
    out = tmp_path / "run"
    assert cli("train", "--output-dir", out, f"model.name={tiny_llama}", *SENTIMENT, *FAST,
               "train.zero_shot_eval=false") == 0
    data = write_jsonl(tmp_path / "eval.jsonl", [{"text": "a fine film", "label": 1}, {"text": "dull", "label": 7},
                                                 {"text": "a bore", "label": 0}])
    capsys.readouterr()
    assert cli("eval", out, "--data", data) == 2
    err = capsys.readouterr().err
    assert "eval.jsonl:2" in err and "pass --skip-bad-rows" in err and "on_bad_rows" not in err
    assert cli("eval", out, "--data", data, "--skip-bad-rows") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 2 and report["skipped"] == 1 and "accuracy" in report
