"""A LoRA run's adapter as a GGUF LoRA file (`llama-cli -m base.gguf --lora adapter.gguf`, Ollama's
ADAPTER), kept apart from the base instead of merged into it.

Merged into the weights, a LoRA's small changes mostly vanish when the result is rounded to 4 bits
(docs/export.md measures it). Kept apart, the base can be written at 4 bits (for a base that was
born 4-bit, exactly as it was) and the adapter at full precision beside it. Each adapted matrix W
gets `<its GGUF name>.lora_a` (A, rank × inputs) and `.lora_b` (B, outputs × rank), B's rows of q and
k reordered as W's are, and peft's scale (alpha / r, or alpha / √r with rsLoRA) folded into B, with
`adapter.lora.alpha` = r so that llama.cpp's own alpha / rank is 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmtune.errors import ConfigError
from lmtune.export.gguf_tensors import Shape, convert, gguf_name


def lora_settings(adapter_dir: Path) -> dict:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise ConfigError(f"{adapter_dir}: only a plain LoRA adapter can be written as a GGUF LoRA "
                          "(DoRA, IA3 ...: export the merged model without --adapter)")
    if config.get("modules_to_save"):
        raise ConfigError(f"{adapter_dir}: the adapter also trains whole modules ({config['modules_to_save']}), which a "
                          "GGUF LoRA cannot hold; export the merged model without --adapter")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError(f"{adapter_dir}: per-module ranks or alphas are not supported in a GGUF LoRA yet; "
                          "export the merged model without --adapter")
    return config


def lora_tensors(adapter_dir: Path, config: dict, shape: Shape):
    """(GGUF name, float32 array) for every A and B of the adapter, B scaled by peft's scale."""
    from safetensors import safe_open

    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / (r ** 0.5 if config.get("use_rslora") else r)
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        names = sorted(f.keys())
        for name in names:
            if ".lora_A." not in name:
                continue
            module = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            target = gguf_name(module, shape)
            if target is None or target in ("token_embd.weight", "output.weight"):
                raise ConfigError(f"{adapter_dir}: a LoRA on {module} cannot be written as a GGUF LoRA; "
                                  "export the merged model without --adapter")
            a = f.get_tensor(name).float().numpy()
            b = f.get_tensor(name.replace(".lora_A.", ".lora_B.")).float().numpy() * scale
            yield f"{target}.lora_a", np.ascontiguousarray(a)
            yield f"{target}.lora_b", np.ascontiguousarray(convert(module, b, shape))


def write_lora_gguf(path: Path, adapter_dir: Path, shape: Shape) -> None:
    import gguf

    config = lora_settings(adapter_dir)
    writer = gguf.GGUFWriter(str(path), shape.arch)
    writer.add_type("adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["r"]))  # llama.cpp scales by alpha / rank: 1
    for name, array in lora_tensors(adapter_dir, config, shape):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
