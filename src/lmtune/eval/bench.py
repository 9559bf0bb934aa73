"""`lmtune bench`: standard benchmarks (EleutherAI's lm-evaluation-harness) on base models and
runs, one model at a time, in one table with the differences to the base.

Each model is loaded the way `lmtune eval` loads it (adapter applied, its tokenizer and template)
and handed to the harness as an object. A run's results are also written to RUN_DIR/bench/<task>.json.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lmtune.errors import ConfigError
from lmtune.eval.harness_model import harness_model, require_lm_eval
from lmtune.eval.harness_tasks import LOCAL_TASKS, task_dir
from lmtune.loading import load_for_inference
from lmtune.run_dir import RunDir

CHAT_TEMPLATE_MODES = ("auto", "on", "off")


@dataclass
class BenchOptions:
    tasks: list[str]
    limit: Optional[int] = None  # per task (per subject for MMLU)
    batch_size: Optional[int] = None  # default: the run's train.eval_batch_size
    chat_template: str = "auto"
    num_fewshot: Optional[int] = None  # default: the task's own
    data_dir: Optional[str] = None
    include_path: list[str] = field(default_factory=list)


def task_manager(options: BenchOptions):
    """The harness's TaskManager that knows every requested task: lmtune's local tasks first; the
    harness's own registry (6 s to index) only when a task is not one of them."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    local = [t for t in options.tasks if t in LOCAL_TASKS]
    paths = ([str(task_dir(local, options.data_dir))] if local else []) + list(options.include_path)
    manager = TaskManager(include_defaults=False, include_path=paths or None)
    if any(t not in manager.all_tasks for t in options.tasks):
        manager = TaskManager(include_defaults=True, include_path=paths or None)
    unknown = [t for t in options.tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"bench: unknown task {', '.join(unknown)}; lmtune's offline tasks are {', '.join(LOCAL_TASKS)}, "
                          "any lm-evaluation-harness task name works where the hub is reachable (`lm-eval ls tasks`), "
                          "and --include-path DIR adds task YAMLs of your own")
    return manager


def check_tasks_load(options: BenchOptions, manager) -> None:
    """Build the tasks once before any model is loaded: a dataset the hub cannot give fails now, in one line."""
    try:
        manager.load(options.tasks)
    except Exception as e:  # datasets / huggingface_hub raise many types for "offline" and "not found"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(f"bench: the harness could not load the data of {', '.join(options.tasks)} ({first}). "
                          "Without the hub, point the task at local files: docs/benchmarks.md, 'Any harness task on "
                          "local files'") from None


def model_label(source: str) -> str:
    return Path(source).name if RunDir(source).is_run() else str(source)


def base_models(sources: list[str]) -> list[str]:
    """The base model of each run among `sources`, once, when not already listed."""
    bases = []
    for source in sources:
        if RunDir(source).is_run():
            name = RunDir(source).config().model.name
            if name not in sources and name not in bases:
                bases.append(name)
    return bases


def uses_template(mode: str, loaded) -> bool:
    """auto: a run is asked in the template it was trained with (unless it learned raw text); a
    base model in its chat template when it has one."""
    if mode != "auto":
        return mode == "on"
    if loaded.run is not None:
        return loaded.cfg.data.format != "text"
    return loaded.task.renderer.mode == "chat"


def bench_model(source: str | RunDir, options: BenchOptions, manager) -> dict:
    """Run the tasks on one model; a run's results are also saved in RUN_DIR/bench/."""
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    loaded = load_for_inference(source)
    batch_size = options.batch_size or (loaded.cfg.train.eval_batch_size if loaded.run else 16)
    template = uses_template(options.chat_template, loaded)
    lm = harness_model(loaded, batch_size)
    out = simple_evaluate(
        model=lm, tasks=options.tasks, num_fewshot=options.num_fewshot, limit=options.limit, task_manager=manager,
        apply_chat_template=template, fewshot_as_multiturn=template, log_samples=False, bootstrap_iters=1000,
        verbosity="WARNING",
    )
    entry = {
        "model": model_label(str(source.path if isinstance(source, RunDir) else source)),
        "source": str(source.path if isinstance(source, RunDir) else source),
        "chat_template": template,
        "seconds": round(time.perf_counter() - start, 1),
        "tasks": {name: task_result(out, name, options) for name in options.tasks},
    }
    if loaded.run is not None:
        save_in_run(loaded.run, entry)
    del lm, loaded, out
    gc.collect()
    return entry


def task_result(out: dict, name: str, options: BenchOptions) -> dict:
    """One task's metrics and standard errors (metric[/filter] -> value), its sample count and settings."""
    raw = out["results"][name]
    metrics, stderr = {}, {}
    for key, value in raw.items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        is_err = metric.endswith("_stderr")
        metric = metric.removesuffix("_stderr") + ("" if filt == "none" else f"/{filt}")
        (stderr if is_err else metrics)[metric] = value
    subtasks = [t for t in out.get("group_subtasks", {}).get(name, [])]
    samples = out.get("n-samples", {})
    n = sum(samples[t]["effective"] for t in subtasks if t in samples) if subtasks else samples.get(name, {}).get("effective")
    return {"metrics": metrics, "stderr": stderr, "samples": n, "limit": options.limit,
            "num_fewshot": out.get("n-shot", {}).get(name, options.num_fewshot),
            "harness": f"lm-eval {out.get('lm_eval_version', '')}".strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def save_in_run(run: RunDir, entry: dict) -> None:
    for name, result in entry["tasks"].items():
        run.write_bench(name, {"task": name, "chat_template": entry["chat_template"], **result})


def run_bench(sources: list[str], options: BenchOptions, with_base: bool = True) -> dict:
    """Every model in `sources` (runs or base models), plus the runs' base models first when
    with_base; the report has one entry per model and the differences to the first base."""
    if options.chat_template not in CHAT_TEMPLATE_MODES:
        raise ConfigError(f"--chat-template must be one of {', '.join(CHAT_TEMPLATE_MODES)}")
    for source in sources:
        if Path(source).is_dir() and not RunDir(source).is_run() and not (Path(source) / "config.json").is_file():
            raise ConfigError(f"{source}: neither an lmtune run (config.yaml) nor a model directory (config.json)")
    models = (base_models(sources) if with_base else []) + list(sources)
    manager = task_manager(options)
    check_tasks_load(options, manager)
    entries = []
    for source in models:
        print(f"lmtune: bench {model_label(source)} on {', '.join(options.tasks)}", flush=True)
        entries.append(bench_model(source, options, manager))
    return {"tasks": options.tasks, "models": entries, "differences": differences(entries)}


def differences(entries: list[dict]) -> dict:
    """model -> task -> metric -> (model - first entry): the change fine-tuning made against the base."""
    if len(entries) < 2:
        return {}
    base = entries[0]["tasks"]
    return {e["model"]: {task: {m: v - base[task]["metrics"][m] for m, v in r["metrics"].items() if m in base[task]["metrics"]}
                         for task, r in e["tasks"].items()} for e in entries[1:]}


def check_bench_tasks(tasks: list[str]) -> None:
    """train.bench_after, before training: the harness is installed, the tasks exist, their data loads."""
    options = BenchOptions(list(tasks))
    check_tasks_load(options, task_manager(options))


def bench_saved_run(run: RunDir, tasks: list[str], limit: Optional[int]) -> dict:
    """train.bench_after: the run's saved weights, loaded as `lmtune bench` loads them; task -> metrics."""
    options = BenchOptions(list(tasks), limit)
    entry = bench_model(run, options, task_manager(options))
    return {name: result["metrics"] for name, result in entry["tasks"].items()}
