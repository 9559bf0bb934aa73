"""lmtune's Python API: the calls the command line makes, for notebooks and other programs.

    import lmtune

    cfg = lmtune.load_config("configs/sentiment_lora.yaml", ["train.lr=1e-4", "data.max_samples=500"])
    result = lmtune.train(cfg)                    # prints as `lmtune train` does; reporters=[] for silence
    run = lmtune.open_run(result.out)             # status(), metrics(), log(), events(), config()
    lmtune.evaluate(run)                          # the task's metrics on the validation split
    lmtune.generate(run, "a gorgeous, witty film")
    lmtune.runs("runs")                           # every run under a directory, one summary each

Every function takes a run directory as a path or a RunDir. Errors a user can cause are
lmtune.errors.LmtuneError (ConfigError, DataError) with a message that says what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from lmtune.config import Config
from lmtune.config import load_config as _load_config
from lmtune.run_dir import RunDir, run_summaries
from lmtune.training.interrupt import RunInterrupted, StopRequest  # noqa: F401  (part of the API)
from lmtune.training.run import RunResult
from lmtune.training.run import train as _train


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """A YAML config (or the defaults) with `key.sub=value` overrides, checked."""
    return _load_config(path, list(overrides))


def train(config: Config | str | Path, overrides: Sequence[str] = (), resume: Optional[str] = None,
          reporters: Optional[list] = None, stop: Optional[StopRequest] = None, splits: Optional[dict] = None) -> RunResult:
    """Train a run. `config`: a Config, or a YAML path with `overrides`. `resume`: "latest" or a
    checkpoint. `reporters`: objects with emit(event) that get every event (default: the console).
    `stop`: a StopRequest another thread may raise; the run then saves and raises RunInterrupted.
    `splits`: the data as lmtune.data.dataset.read_data(cfg) reads it, when the caller has read it
    already (the command line does, before this module's imports)."""
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    return _train(cfg, resume=resume, reporters=reporters, stop=stop, splits=splits)


def open_run(path: str | Path) -> RunDir:
    """An existing run directory: its status, config, metrics, log and events."""
    return RunDir.open(path)


def runs(directory: str | Path = "runs") -> list[dict]:
    """One summary per run directory under `directory` (state, task, method, model, metrics), newest first."""
    return run_summaries(directory)


def evaluate(run: str | Path | RunDir, data: Optional[str] = None, generations: Optional[str] = None,
             max_generations: int = 50, max_new_tokens: int = 256, skip_bad_rows: bool = False) -> dict:
    """The task's metrics on the run's validation split or on `data`; for SFT, generations too.
    `skip_bad_rows` skips rows that fail the checks and counts them (report["skipped"])."""
    from lmtune.eval.evaluate import evaluate_run

    return evaluate_run(run, data, generations, max_generations, max_new_tokens, skip_bad_rows)


def generate(run: str | Path | RunDir, prompt: str | list[str], system: Optional[str] = None, **sampling) -> str | list[str]:
    """Answers to one prompt or a list of prompts, rendered as in training. `sampling`: the fields
    of lmtune.generation.SamplingParams (max_new_tokens, temperature, top_p, top_k, seed ...)."""
    from lmtune.generation import SamplingParams
    from lmtune.infer.generate import chat_messages
    from lmtune.infer.load import load_engine

    cfg, engine = load_engine(run)
    system = system if system is not None else cfg.data.system_prompt
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    answers = engine.answer_all([chat_messages(p, system) for p in prompts], SamplingParams(**sampling))
    return answers[0] if isinstance(prompt, str) else answers


def generate_file(run: str | Path | RunDir, input_path: str | Path, output_path: str | Path, system: Optional[str] = None,
                  batch_size: int = 8, **sampling) -> int:
    """Answers for every row of a JSONL file of {"prompt": ...} or {"messages": [...]}, batched by
    length, written in input order; returns how many."""
    from lmtune.generation import SamplingParams
    from lmtune.infer.generate import generate_file as _generate_file
    from lmtune.infer.load import load_engine

    cfg, engine = load_engine(run)
    system = system if system is not None else cfg.data.system_prompt
    return _generate_file(engine, str(input_path), str(output_path), SamplingParams(**sampling), system, batch_size)


def chat(run: str | Path | RunDir, system: Optional[str] = None, **sampling) -> None:
    """An interactive chat on the terminal (stdin / stdout), streamed."""
    from lmtune.infer.chat import chat as _chat
    from lmtune.generation import SamplingParams
    from lmtune.infer.load import load_engine

    cfg, engine = load_engine(run)
    _chat(engine, SamplingParams(**sampling), system if system is not None else cfg.data.system_prompt)


def merge(run: str | Path | RunDir, out_dir: str | Path, dtype: str = "fp32") -> dict:
    """Fold a LoRA / DoRA / IA3 / QLoRA adapter into the base weights; writes a plain model."""
    from lmtune.export.merge import merge_run

    return merge_run(run, out_dir, dtype)


def export(run: str | Path | RunDir, out_dir: str | Path, dtype: str = "fp32") -> Path:
    """A self-contained model folder (adapters merged) with a model card."""
    from lmtune.export.export import export_run

    return export_run(run, out_dir, dtype)


def export_gguf(source: str | Path | RunDir, out_dir: str | Path, quant: str = "q8_0", adapter: bool = False) -> dict:
    """One GGUF file for llama.cpp / Ollama (adapters merged, or with `adapter` a LoRA written apart
    beside its base), a Modelfile and a model card."""
    from lmtune.export.gguf_export import export_gguf as _export_gguf

    return _export_gguf(source, out_dir, quant, adapter)


def bench(models: Sequence[str | Path], tasks: Sequence[str], limit: Optional[int] = None, batch_size: Optional[int] = None,
          chat_template: str = "auto", num_fewshot: Optional[int] = None, with_base: bool = True,
          data_dir: Optional[str] = None, include_path: Sequence[str] = ()) -> dict:
    """Standard benchmarks (lm-evaluation-harness) on runs and base models: one entry per model,
    the runs' base models first, and each model's difference to the first. Runs keep theirs in RUN_DIR/bench/."""
    from lmtune.eval.bench import BenchOptions, run_bench

    options = BenchOptions(list(tasks), limit, batch_size, chat_template, num_fewshot, data_dir, list(include_path))
    return run_bench([str(m) for m in models], options, with_base)


def embed(source: str | Path | RunDir, texts: Sequence[str], batch_size: int = 32):
    """(n, dim) fp32 numpy embeddings of the texts: an embedding run, or a plain model with mean pooling."""
    from lmtune.infer.embed import load_embedder

    return load_embedder(source).embed(list(texts), batch_size)[0].numpy()


def embed_file(source: str | Path | RunDir, input_path: str | Path, output_path: str | Path, batch_size: int = 32) -> tuple[int, int]:
    """Embeds a JSONL of {"text": ...} rows (or a .txt of one text a line) into a .npy file, rows in
    input order; returns (rows, dimensions)."""
    import numpy as np

    from lmtune.atomic import write_atomic
    from lmtune.infer.embed import load_embedder, read_texts

    texts = read_texts(input_path)  # before the model loads: a bad file fails at once
    vectors = load_embedder(source).embed(texts, batch_size)[0].numpy()
    write_atomic(output_path, lambda tmp: np.save(tmp, vectors, allow_pickle=False), suffix=".npy")
    return vectors.shape


def plan(config: Config | str | Path, overrides: Sequence[str] = (), compare: bool = False,
         throughput: Optional[float] = None) -> list:
    """Memory and time a run will need, before it starts (prints the table; returns the plans)."""
    from lmtune.plan.command import plan as _plan

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    return _plan(cfg, compare=compare, throughput=throughput)


def preview_data(config: Config | str | Path, overrides: Sequence[str] = (), rows: int = 3) -> dict:
    """Counts, lengths and the first rows with their loss mask (prints them; returns the counts)."""
    from lmtune.plan.preview import preview

    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    return preview(cfg, rows=rows)


def plot(runs: Sequence[str | Path | RunDir], output: str | Path) -> Path:
    """One chart of the loss and validation metrics of one or more runs."""
    from lmtune.plot import plot_runs

    opened = [r if isinstance(r, RunDir) else RunDir(r) for r in runs]
    return plot_runs([(r.path.name, r.log()) for r in opened], Path(output))


def serve_app(runs: Sequence[str | Path], base: Optional[str] = None, api_key: Optional[str] = None):
    """A FastAPI app with the OpenAI-compatible routes over these runs (and a base model)."""
    from lmtune.infer.load import load_engines
    from lmtune.infer.serve import build_app

    return build_app(load_engines([str(r) for r in runs], base), api_key)


def ui_app(runs_dir: str | Path = "runs", configs_dir: str | Path = "configs", token: Optional[str] = None,
           max_running: int = 1):
    """The `lmtune ui` web application (FastAPI) over a runs directory."""
    from lmtune.ui.app import build_ui

    return build_ui(runs_dir, configs_dir, token, max_running)


def describe_config(section: Optional[str] = None) -> str:
    """Every config key with its type, default and meaning (one section, or all)."""
    from lmtune.config_help import describe

    return describe(section)
