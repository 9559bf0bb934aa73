"""Load what `lmtune train` saved: the resolved config, the tokenizer and the trained model."""

from __future__ import annotations

from pathlib import Path

from lmtune import hardware
from lmtune.config import Config, load_config
from lmtune.errors import ConfigError
from lmtune.methods import METHODS
from lmtune.model.load import load_causal_lm, load_tokenizer, resolve_model_path


def load_run(run_dir: str | Path, quantized: bool = True, dtype=None) -> tuple[Config, object, object, str]:
    """(config, model in eval mode on the device, tokenizer, precision) of a finished run.

    quantized=False loads a QLoRA run's base unquantised, and dtype overrides the weights' dtype
    (both for merging)."""
    from lmtune.train.run import quantization, resolve_precision, weights_dtype

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run}: not an lmtune run directory (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    precision = resolve_precision(cfg.train.precision)
    if (run / "model").is_dir():
        saved = run / "model"
        model = load_causal_lm(str(saved), cfg.model, dtype or weights_dtype(cfg.model.dtype, precision, False))
    elif (run / "adapter").is_dir():
        from peft import PeftModel

        saved = run / "adapter"
        dtype = dtype or weights_dtype(cfg.model.dtype, precision, METHODS.get(cfg.method.name).freezes_base)
        quant = quantization(cfg, precision) if quantized else None
        base = load_causal_lm(resolve_model_path(cfg.model), cfg.model, dtype, quant)
        model = PeftModel.from_pretrained(base, str(saved))
    else:
        raise ConfigError(f"{run}: no saved adapter or model; did the training run finish?")
    tokenizer = load_tokenizer(str(saved), cfg.model)
    model.to(hardware.device()).eval()
    return cfg, model, tokenizer, precision
