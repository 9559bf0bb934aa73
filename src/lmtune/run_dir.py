"""Load what `lmtune train` saved: the resolved config, the tokenizer and the trained model."""

from __future__ import annotations

from pathlib import Path

from lmtune import hardware
from lmtune.config import Config, load_config
from lmtune.data.templates import Renderer
from lmtune.errors import ConfigError
from lmtune.methods import METHODS
from lmtune.model.load import load_model, load_tokenizer, resolve_model_path
from lmtune.tasks import TASKS


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
    saved = next((run / d for d in ("model", "adapter") if (run / d).is_dir()), None)
    if saved is None:
        raise ConfigError(f"{run}: no saved adapter or model; did the training run finish?")
    tokenizer = load_tokenizer(str(saved), cfg.model)
    task = TASKS.get(cfg.task.name)(cfg, tokenizer, Renderer(tokenizer, cfg.data.template))
    spec = type(task).spec(cfg)
    if saved.name == "model":
        model = task.prepare(load_model(str(saved), cfg.model, dtype or weights_dtype(cfg.model.dtype, precision, False), spec=spec))
        load_task_layers(model, saved)
    else:
        from peft import PeftModel

        dtype = dtype or weights_dtype(cfg.model.dtype, precision, METHODS.get(cfg.method.name).freezes_base)
        quant = quantization(cfg, precision) if quantized else None
        base = task.prepare(load_model(resolve_model_path(cfg.model), cfg.model, dtype, quant, spec))
        model = PeftModel.from_pretrained(base, str(saved))  # restores the task's layers saved with the adapter
    model.to(hardware.device()).eval()
    return cfg, model, tokenizer, precision


# Layers a task adds on top of a transformers model (token_cls: crf); save_pretrained writes them
# beside the model's weights, from_pretrained does not know them.
TASK_LAYERS = ("crf",)


def load_task_layers(model, saved: Path) -> None:
    from safetensors.torch import load_file

    names = [n for n in TASK_LAYERS if hasattr(model, n)]
    if not names:
        return
    state = {}
    for file in sorted(saved.glob("*.safetensors")):
        state.update({k: v for k, v in load_file(file).items() if k.split(".", 1)[0] in names})
    missing = model.load_state_dict(state, strict=False).missing_keys
    lost = [k for k in missing if k.split(".", 1)[0] in names]
    if lost:
        raise ConfigError(f"{saved}: the saved model lacks {', '.join(lost[:3])}; was it trained with the same task settings?")
