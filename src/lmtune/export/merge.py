"""`lmtune merge`: fold a LoRA / DoRA / IA3 (or QLoRA) adapter into the base weights and write a
plain transformers model, checked against the adapter model before anything is written."""

from __future__ import annotations

from pathlib import Path

import torch

from lmtune.atomic import empty_dir, save_dir_atomic
from lmtune.errors import ConfigError, LmtuneError
from lmtune.loading import load_for_inference
from lmtune.methods import METHODS
from lmtune.run_dir import RunDir

CHECK_TEXT = "The quick brown fox jumps over the lazy dog. A gorgeous, witty film."
TOLERANCE = 1e-3  # max |logit difference| allowed between merged and adapter model, both in fp32


def merge_run(run_dir: str | Path | RunDir, out_dir: str | Path, save_dtype: str = "fp32") -> dict:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    name = run.config().method.name
    method = METHODS.get(name)
    if method.saves == "model":
        raise ConfigError(f"{run.path}: a {name} run is already a plain model ({run.path / 'model'}); there is nothing to merge")
    if not method.mergeable:
        raise ConfigError(f"{run.path}: {name} learns virtual tokens, which cannot be folded into weights; "
                          "use the run directory itself with lmtune generate / eval")
    run.check_weights()
    out = Path(out_dir)
    empty_dir(out)
    if method.quantization:
        print(f"lmtune: a {name} adapter is merged into the base reloaded in full precision, not into 4-bit weights")
    # Merging happens in fp32 so that W + scale * B A is not rounded before it is checked.
    loaded = load_for_inference(run, quantized=False, dtype=torch.float32)
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = torch.tensor([tokenizer(CHECK_TEXT, add_special_tokens=False)["input_ids"]], device=next(model.parameters()).device)
    layer, weight_before = _first_adapted_weight(model)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        got = merged(input_ids=ids).logits
    diff = (got - expected).abs().max().item()
    if diff > TOLERANCE:
        raise LmtuneError(f"the merged model disagrees with the adapter model (max |logit difference| {diff:.2e}); nothing written")
    changed = not torch.equal(layer.weight.detach(), weight_before)
    if not changed:
        raise LmtuneError("merging left the base weights unchanged (the adapter is zero?); nothing written")
    merged.to(dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[save_dtype])

    def save(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    out.rmdir()  # prepared empty above; the merged model is moved into its place whole
    save_dir_atomic(out, save)
    return {"out": str(out), "method": name, "max_abs_logit_diff": diff, "dtype": save_dtype}


def _first_adapted_weight(model):
    """A base layer the adapter touches, and a copy of its weight before merging."""
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if base is not None and hasattr(base, "weight"):
            return base, base.weight.detach().clone()
    raise LmtuneError("no adapted layer found in this run's model")
