"""`lmtune train`: config -> model, data, method -> Trainer -> saved run with metrics.

Under torchrun / accelerate every process runs this; only the main process writes the run files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from lmtune import hardware
from lmtune.config import Config, config_to_yaml
from lmtune.data.dataset import read_splits, stream_split, tokenize_split
from lmtune.data.templates import Renderer
from lmtune.errors import ConfigError
from lmtune.methods import METHODS, trainable_summary
from lmtune.model.load import CAUSAL_LM, load_model_and_tokenizer
from lmtune.model.packed_attention import use_packed_attention
from lmtune.outputs import prepare_output_dir, save_dir_atomic, write_json_atomic, write_text_atomic
from lmtune.report import print_data_summary, print_run_summary
from lmtune.tasks import TASKS
from lmtune.train.arguments import best_metric, optimizer_arguments, training_arguments
from lmtune.train.callbacks import JsonlLogger, Progress, truncate_log
from lmtune.train.checkpoint import checkpoint_step, clear_staging, latest_checkpoint, resume_checkpoint
from lmtune.train.compile import compile_blocks
from lmtune.train.interrupt import StopOnSignal, TrainingInterrupted


def resolve_precision(requested: str) -> str:
    precision = hardware.auto_precision() if requested == "auto" else requested
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return precision


def quantization(cfg: Config, precision: str):
    """The quantization config of the base (QLoRA), with the run's precision as compute dtype."""
    method = METHODS.get(cfg.method.name)
    if not method.quantization:
        return None
    config = method.quantization(cfg.method, hardware.DTYPES[precision])
    if TASKS.get(cfg.task.name).spec(cfg) != CAUSAL_LM:
        # A new classification head must stay a plain layer to train; transformers only knows to
        # skip a causal LM's output layer.
        config.llm_int8_skip_modules = ["score", "classifier", "lm_head"]
    return config


def weights_dtype(requested: str, precision: str, base_frozen: bool) -> torch.dtype:
    """Frozen base weights are held in the 16-bit compute dtype (half the memory, no casts per
    step); trained weights stay fp32 so that small updates are not rounded away."""
    if requested != "auto":
        return hardware.DTYPES[requested]
    return hardware.DTYPES[precision] if base_frozen and precision != "fp32" else torch.float32


def tokenize_splits(cfg: Config, splits: dict, tokenizer, task) -> dict:
    """name -> (tokenised dataset, SplitInfo); a streamed training split is read lazily instead."""
    out = {}
    for name, split in splits.items():
        if name == "train" and cfg.data.streaming:
            out[name] = stream_split(cfg.data.train, cfg.data, task.encode, cfg.train.seed)
        else:
            out[name] = tokenize_split(split, cfg.data, cfg.task, tokenizer, task.encode)
    return out


def save_model(model, tokenizer, out: Path) -> Path:
    """The adapter (PEFT methods) or the whole model, with the tokenizer beside it."""
    from peft import PeftModel

    target = out / ("adapter" if isinstance(model, PeftModel) else "model")

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(target, save)
    return target


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@dataclass
class RunResult:
    metrics: dict
    model: object  # the trained model, still in memory
    tokenizer: object
    out: Path


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate (which set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def start_run_dir(cfg: Config, resume: str | None) -> Path:
    """A fresh (empty) output directory, or the existing one of the run being resumed."""
    out = Path(cfg.output.dir)
    if resume is None:
        return prepare_output_dir(out, cfg.output.overwrite) if is_main_process() else out
    if not (out / "checkpoints").is_dir():
        raise ConfigError(f"--resume: {out} has no checkpoints/ directory; is output.dir the run to resume?")
    saved = out / "config.yaml"
    if is_main_process() and saved.is_file():
        before = yaml.safe_load(saved.read_text(encoding="utf-8"))
        changed = sorted(config_diff(before, cfg.model_dump(mode="json")))
        if changed:
            print(f"lmtune: resuming with changed settings: {', '.join(changed)}", flush=True)
    return out


def config_diff(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(config_diff(a.get(k), b.get(k), f"{prefix}{k}.") for k in {*a, *b}))
    return set() if a == b else {prefix.rstrip(".")}


def read_metrics(out: Path) -> dict:
    path = out / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def build_callbacks(cfg: Config, out: Path, stop: StopOnSignal) -> list:
    from transformers import EarlyStoppingCallback

    callbacks = [JsonlLogger(out / "log.jsonl"), stop]
    t = cfg.train
    if t.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))
    if "tensorboard" in t.report_to and is_main_process():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(out / "tensorboard"))))
    return callbacks


def check_trackers(cfg: Config) -> None:
    """A tracker that is not installed is a one-line error before any work, not a traceback after."""
    import importlib.util

    modules = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
    for name in cfg.train.report_to:
        if importlib.util.find_spec(modules[name]) is None:
            raise ConfigError(f"train.report_to: {name} is not installed; pip install {name}, or remove it from the list")


def samples_seen(trainer, info, epochs: float) -> int:
    """Training rows consumed, over all processes (the last batch of an epoch may be short)."""
    args = trainer.args
    full_batches = trainer.state.global_step * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    return min(full_batches, int(info.rows * epochs)) if info.rows >= 0 and args.max_steps <= 0 else full_batches


def write_plot(out: Path) -> None:
    from lmtune.plot import plot_runs

    if (out / "log.jsonl").is_file():
        plot_runs([out], out / "loss.png")


def train(cfg: Config, resume: str | None = None, command: str = "lmtune train CONFIG") -> RunResult:
    """Run one training job. `resume`: "latest" or a checkpoint path; `command` is quoted in the
    message that says how to resume an interrupted run."""
    from transformers import set_seed
    from transformers.trainer_callback import ProgressCallback

    from lmtune.train.trainer import LmtuneTrainer

    check_trackers(cfg)
    out = start_run_dir(cfg, resume)
    main = is_main_process()
    checkpoint = None
    if resume is not None:
        checkpoint = resume_checkpoint(out / "checkpoints", resume)
        if main:
            clear_staging(out / "checkpoints")
            truncate_log(out / "log.jsonl", checkpoint_step(checkpoint))
            print(f"lmtune: resuming from {checkpoint}", flush=True)
    if main:
        write_text_atomic(out / "config.yaml", config_to_yaml(cfg))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.train.seed)

    precision = resolve_precision(cfg.train.precision)
    method = METHODS.get(cfg.method.name)
    splits = read_splits(cfg.data, cfg.train.seed)
    dtype = weights_dtype(cfg.model.dtype, precision, method.freezes_base)
    task_cls = TASKS.get(cfg.task.name)
    model, tokenizer = load_model_and_tokenizer(cfg.model, dtype, quantization_config=quantization(cfg, precision),
                                                spec=task_cls.spec(cfg))
    if cfg.data.packing:
        use_packed_attention(model)  # each example of a pack attends alone, not as one long row
    task = task_cls(cfg, tokenizer, Renderer(tokenizer, cfg.data.template))
    metric = best_metric(cfg)
    if metric and metric not in task.metrics:
        raise ConfigError(f"train.metric_for_best: task {cfg.task.name} reports {', '.join(task.metrics)}, not {metric!r}")
    args = training_arguments(cfg, out, precision, "validation" in splits)
    if cfg.train.on_nan == "skip" and args.world_size > 1:
        raise ConfigError("train.on_nan=skip would desynchronise the processes of a distributed run; use stop")
    with args.main_process_first(desc="tokenising"):  # one process fills the cache, the others read it
        tokenized = tokenize_splits(cfg, splits, tokenizer, task)
    train_ds, train_info = tokenized["train"]
    eval_ds, eval_info = tokenized.get("validation", (None, None))
    task.fit(train_ds)
    if cfg.distill:
        from lmtune.train.distill import DistilledTask, load_teacher

        teacher = load_teacher(cfg, task, tokenizer, precision)
        task = DistilledTask(task, teacher, cfg.distill.alpha, cfg.distill.temperature)
    if main:
        print_data_summary([("train", train_info), ("validation", eval_info)], task.renderer.mode)

    model.to(args.device)
    metrics: dict = {"zero_shot": read_metrics(out).get("zero_shot")} if resume else {}
    if eval_ds is not None and cfg.train.zero_shot_eval and resume is None and main:
        print("lmtune: zero-shot evaluation on the validation split ...", flush=True)
        metrics["zero_shot"] = task.evaluate(model, eval_ds, cfg.train.eval_batch_size, precision)
        write_json_atomic(out / "metrics.json", metrics)
    metrics = {k: v for k, v in metrics.items() if v is not None}

    model = method.apply(task.prepare(model), cfg.method, tokenizer)
    if cfg.train.compile:
        compiled = compile_blocks(model)
        if main:
            print(f"lmtune: compiling {compiled} transformer blocks (torch.compile); the first steps take longer", flush=True)
    trainable, total = trainable_summary(model)
    weights = "4-bit" if method.quantization else str(dtype).removeprefix("torch.")
    if main:
        print(f"lmtune: {cfg.method.name}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%), "
              f"base weights {weights}, precision {precision}", flush=True)

    stop = StopOnSignal()
    trainer = LmtuneTrainer(
        model=model,
        **optimizer_arguments(model, cfg),
        args=args,
        train_dataset=train_ds.remove_columns(["truncated"]),
        eval_dataset=eval_ds,
        data_collator=task.collator(packing=cfg.data.packing),
        callbacks=build_callbacks(cfg, out, stop),
        task=task,
        precision=precision,
        on_nan=cfg.train.on_nan,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(Progress)
    # A resumed run's token counter includes the tokens before the checkpoint; its runtime does not.
    # (Read now: checkpoint rotation may delete the checkpoint during the run.)
    tokens_before = json.loads((checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0) if checkpoint else 0
    with stop.installed():
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    runtime = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    new_tokens = tokens - tokens_before
    metrics["train"] = {
        "runtime_s": round(runtime, 2),
        "steps": trainer.state.global_step,
        "samples": samples_seen(trainer, train_info, cfg.train.epochs),
        "tokens": tokens,
        "tokens_per_s": round(new_tokens / runtime, 1) if runtime else 0.0,
        "train_loss": result.metrics.get("train_loss"),
        "peak_memory_mb": round(hardware.peak_memory_mb(), 1),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / total, 6),
        "precision": precision,
        "skipped_nonfinite_batches": trainer.skipped_nonfinite,
        "resumed_from": str(checkpoint) if checkpoint else None,
    }
    if metric and trainer.state.best_metric is not None:
        metrics["best"] = {"metric": metric, "value": trainer.state.best_metric,
                           "checkpoint": trainer.state.best_model_checkpoint, "loaded_at_end": cfg.train.load_best_at_end}
    if stop.signum is not None:
        saved_at = latest_checkpoint(out / "checkpoints")
        if main:
            metrics["interrupted"] = {"signal": stop.name, "step": trainer.state.global_step, "checkpoint": str(saved_at)}
            write_json_atomic(out / "metrics.json", metrics)
            write_plot(out)
        raise TrainingInterrupted(f"stopped by {stop.name} at step {trainer.state.global_step}; checkpoint saved to "
                                  f"{saved_at}. Resume with: {command} --resume", stop.signum)

    if eval_ds is not None and main:
        print("lmtune: final evaluation on the validation split ...", flush=True)
        metrics["final"] = task.evaluate(model, eval_ds, cfg.train.eval_batch_size, precision)
        task.write_artifacts(out)
    if main:
        saved = save_model(model, tokenizer, out)
        metrics["saved"] = {"path": str(saved), "size_mb": round(dir_size_mb(saved), 2)}
        metrics["data"] = {name: vars(info) for name, info in (("train", train_info), ("validation", eval_info)) if info}
        write_json_atomic(out / "metrics.json", metrics)
        write_plot(out)
        print_run_summary(metrics, task.metric_for_summary, out)
    return RunResult(metrics, model, tokenizer, out)
