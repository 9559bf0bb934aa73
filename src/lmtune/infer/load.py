"""Engines for `lmtune serve` / `chat` / `generate`: runs, adapters sharing one base, a base model."""

from __future__ import annotations

from pathlib import Path

from lmtune.errors import ConfigError
from lmtune.generation import Engine
from lmtune.loading import Loaded, load_for_inference
from lmtune.methods import METHODS
from lmtune.run_dir import RunDir
from lmtune.tasks import TASKS


def refuse_non_generating(run: RunDir, cfg) -> None:
    if not TASKS.get(cfg.task.name).generates:
        raise ConfigError(f"{run.path}: a {cfg.task.name} run predicts labels, it does not generate text; "
                          "score it with `lmtune eval RUN_DIR --data FILE`")


def engine_of(loaded: Loaded, adapter: str | None = None) -> Engine:
    return Engine(loaded.model, loaded.tokenizer, loaded.task.renderer, loaded.precision, adapter,
                  answer_tokens=TASKS.get(loaded.cfg.task.name).answer_tokens)


def load_engine(run_dir: str | Path) -> tuple[object, Engine]:
    """(the run's config, an engine over its model). Checks that the run generates before loading it."""
    run = RunDir.open(run_dir)
    refuse_non_generating(run, run.config())
    loaded = load_for_inference(run)
    return loaded.cfg, engine_of(loaded)


def load_engines(run_dirs: list[str], base: str | None = None) -> dict[str, object]:
    """model id -> Engine (an Embedder for an embedding run). Runs whose adapters can share a base
    (LoRA, DoRA, IA3 on the same model) are loaded onto one copy of it; other runs get their own model."""
    engines: dict[str, Engine] = {}
    shared: dict[tuple, Engine] = {}  # (base model name, precision, template) -> the engine that owns the model
    for run_dir in run_dirs:
        run = RunDir.open(run_dir)
        name = _unique(run.path.resolve().name, engines)
        cfg = run.config()
        if cfg.task.name == "embedding":  # served on /v1/embeddings
            from lmtune.infer.embed import load_embedder

            engines[name] = load_embedder(run)
            continue
        key = (cfg.model.name, cfg.train.precision, cfg.data.template)
        shareable = METHODS.get(cfg.method.name).shareable
        if shareable and key in shared and (run.path / "adapter").is_dir():
            refuse_non_generating(run, cfg)
            run.check_weights()
            owner = shared[key]
            owner.model.load_adapter(str(run.path / "adapter"), adapter_name=name)
            engines[name] = Engine(owner.model, owner.tokenizer, owner.renderer, owner.precision, name, owner.lock,
                                   TASKS.get(cfg.task.name).answer_tokens)
            continue
        cfg, engine = load_engine(run.path)
        if shareable:
            engine.adapter = "default"  # peft's name for the first adapter
            shared.setdefault(key, engine)
        engines[name] = engine
    if base:
        engines[_unique(base, engines)] = base_engine(base)
    return engines


def base_engine(name: str) -> Engine:
    """A plain base model (an alias, a directory, a GGUF file or a hub id), no adapter."""
    return engine_of(load_for_inference(name))


def _unique(name: str, taken: dict) -> str:
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name}-{i}", i + 1
    return candidate
