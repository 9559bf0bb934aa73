"""Engines for `lmtune serve` / `chat` / `generate`: runs, adapters sharing one base, a base model."""

from __future__ import annotations

from pathlib import Path

from lmtune import hardware
from lmtune.config import ModelConfig, load_config
from lmtune.data.templates import Renderer
from lmtune.infer.engine import Engine
from lmtune.run_dir import load_run

# Adapters of these methods can live side by side on one peft model and be switched per request.
SHAREABLE = ("lora", "dora", "ia3")


def refuse_non_generating(run_dir, cfg) -> None:
    from lmtune.errors import ConfigError
    from lmtune.tasks import TASKS

    if not TASKS.get(cfg.task.name).generates:
        raise ConfigError(f"{run_dir}: a {cfg.task.name} run predicts labels, it does not generate text; "
                          "score it with `lmtune eval RUN_DIR --data FILE`")


def load_engine(run_dir: str | Path) -> tuple[object, Engine]:
    if (Path(run_dir) / "config.yaml").is_file():
        refuse_non_generating(run_dir, load_config(Path(run_dir) / "config.yaml"))
    cfg, model, tokenizer, precision = load_run(run_dir)
    return cfg, Engine(model, tokenizer, Renderer(tokenizer, cfg.data.template), precision)


def load_engines(run_dirs: list[str], base: str | None = None) -> dict[str, Engine]:
    """model id -> Engine. Runs whose adapters can share a base (LoRA, DoRA, IA3 on the same
    model) are loaded onto one copy of it; other runs get their own model."""
    engines: dict[str, Engine] = {}
    shared: dict[tuple, Engine] = {}  # (base model name, precision) -> the engine that owns the model
    for run_dir in run_dirs:
        run = Path(run_dir)
        name = _unique(run.resolve().name, engines)
        cfg = load_config(run / "config.yaml") if (run / "config.yaml").is_file() else None
        key = (cfg.model.name, cfg.train.precision, cfg.data.template) if cfg else None
        if cfg and cfg.method.name in SHAREABLE and key in shared and (run / "adapter").is_dir():
            owner = shared[key]
            owner.model.load_adapter(str(run / "adapter"), adapter_name=name)
            engines[name] = Engine(owner.model, owner.tokenizer, owner.renderer, owner.precision, name, owner.lock)
            continue
        cfg, engine = load_engine(run)
        if cfg.method.name in SHAREABLE:
            engine.adapter = "default"  # peft's name for the first adapter
            shared.setdefault(key, engine)
        engines[name] = engine
    if base:
        engines[_unique(base, engines)] = base_engine(base)
    return engines


def base_engine(name: str) -> Engine:
    """A plain base model (an alias, a directory, a GGUF file or a hub id), no adapter."""
    from lmtune.model.load import load_model_and_tokenizer
    from lmtune.train.run import resolve_precision

    precision = resolve_precision("auto")
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=name), hardware.DTYPES[precision])
    model.to(hardware.device()).eval()
    return Engine(model, tokenizer, Renderer(tokenizer), precision)


def _unique(name: str, taken: dict) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}-{i}", i + 1
    return candidate
