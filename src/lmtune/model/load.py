"""Resolve a model name and load (model, tokenizer).

A name is, in this order: a built-in alias (smollm2-135m-instruct ...), a local GGUF file, a local
Hugging Face directory, or a hub id (for users who have a hub).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from lmtune.sections import ModelConfig
from lmtune.errors import ConfigError
from lmtune.model.builtin import BUILTIN_MODELS, builtin_path, converted_gguf_dir


def resolve_model_path(cfg: ModelConfig, key: str = "model.name") -> str:
    """A local directory (or a hub id) that from_pretrained can load as plain safetensors. `key`:
    the setting that named it, for the errors."""
    name = cfg.name
    if name in BUILTIN_MODELS:
        path = builtin_path(name)
        return str(converted_gguf_dir(path) if path.suffix == ".gguf" else path)
    local = Path(name).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return str(converted_gguf_dir(local))
    if local.is_dir() and cfg.gguf_file:
        gguf = local / cfg.gguf_file
        if not gguf.is_file():
            raise ConfigError(f"model.gguf_file: {gguf} not found")
        return str(converted_gguf_dir(gguf))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{key}: {local} has no config.json; is it a Hugging Face model directory?")
        return str(local)
    if local.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"{key}: {name} is not a model directory or a .gguf file")
    if len(local.parts) > 1 and Path(local.parts[0]).is_dir():
        # `runs/sentiment_lora` with a local runs/: a path that is missing, not a hub id to fetch (and retry)
        raise ConfigError(f"{key}: {name} does not exist ({local.parts[0]}/ is a local directory, so this is a path, not a hub id)")
    return name  # a hub id


def builtin_hint(name: str) -> str:
    """'; did you mean ...?' when a name that failed to load is close to a built-in model's."""
    import difflib

    close = difflib.get_close_matches(name.lower(), BUILTIN_MODELS, n=1, cutoff=0.7)
    return f"; did you mean the built-in {close[0]!r}?" if close else ""


def load_tokenizer(path: str, cfg: ModelConfig, key: str = "model.name"):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise ConfigError(f"{key}: cannot load a tokenizer for {cfg.name!r}: {str(e).splitlines()[0]}{builtin_hint(cfg.name)}") from None
    if tokenizer.pad_token is None:
        # Reuse an existing token: adding one would change the vocabulary and the embedding size.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(f"{key}: the tokenizer of {cfg.name!r} has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


@dataclass(frozen=True)
class ModelSpec:
    """Which transformers class a task trains, with the arguments that shape its head."""

    auto_class: str = "AutoModelForCausalLM"
    kwargs: tuple = ()  # (name, value) pairs, e.g. num_labels, id2label


CAUSAL_LM = ModelSpec()


def labelled_head(auto_class: str, names: list[str]) -> ModelSpec:
    """A classification class with one output per label name, the names kept in its config."""
    return ModelSpec(auto_class, (("num_labels", len(names)), ("id2label", dict(enumerate(names))),
                                  ("label2id", {n: i for i, n in enumerate(names)})))


def load_model(path: str, cfg: ModelConfig, dtype: torch.dtype, quantization_config=None, spec: ModelSpec = CAUSAL_LM,
               strict: bool = False):
    """The model in the task's class. strict: every weight must come from the files (a trained
    model's directory), where transformers would only warn and initialise the missing ones."""
    import transformers

    auto = getattr(transformers, spec.auto_class)
    try:
        model, info = auto.from_pretrained(
            path,
            revision=cfg.revision,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,  # never unpickle a checkpoint
            quantization_config=quantization_config,
            **({"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}),
            **dict(spec.kwargs),
            output_loading_info=True,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name: cannot load {cfg.name!r}: {str(e).splitlines()[0]}{builtin_hint(cfg.name)}") from None
    if strict and info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ConfigError(f"{path}: the saved model lacks {len(missing)} weights (such as {missing[0]}); "
                          "re-run the training, or resume it from a checkpoint")
    if cfg.keep_layers:
        keep_first_layers(model, cfg.keep_layers)
    return model


def keep_first_layers(model, n: int) -> None:
    """Drop every transformer block after the first n (a student initialised from its teacher)."""
    from lmtune.model.blocks import transformer_blocks

    blocks = transformer_blocks(model, "model.keep_layers")
    if n > len(blocks):
        raise ConfigError(f"model.keep_layers: {n} > the model's {len(blocks)} blocks")
    del blocks[n:]
    config = model.config
    for key in ("num_hidden_layers", "n_layer"):
        if getattr(config, key, None) is not None:
            setattr(config, key, n)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:n]


def keep_4bit_layout_for_training(model) -> None:
    """bitsandbytes repacks 4-bit weights into an inference-only layout the first time a layer
    runs in eval mode on an AVX512-BF16 CPU; afterwards its matmul no longer passes gradients to
    the layer's input, and training (after a zero-shot evaluation) would silently go wrong."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_model_and_tokenizer(cfg: ModelConfig, dtype: torch.dtype, path: Optional[str] = None, quantization_config=None,
                             spec: ModelSpec = CAUSAL_LM):
    path = path or resolve_model_path(cfg)
    tokenizer = load_tokenizer(path, cfg)
    model = load_model(path, cfg, dtype, quantization_config, spec)
    if quantization_config is not None:
        keep_4bit_layout_for_training(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
