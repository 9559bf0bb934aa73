"""The second half of a run: the Hugging Face Trainer built from the prepared run, trained (or
resumed from a checkpoint) until it ends or is asked to stop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lmtune.data.tokenize import TRUNCATED
from lmtune.errors import ConfigError
from lmtune.run_dir import RunDir
from lmtune.training.arguments import optimizer_arguments
from lmtune.training.auto_compile import AutoCompile, shapes_key, why_not_auto
from lmtune.training.callbacks import JsonlLogger
from lmtune.training.interrupt import StopCallback, StopRequest
from lmtune.training.prepare import Prepared
from lmtune.training.reporters import EventCallback, Reporters


@dataclass
class Fitted:
    trainer: object
    runtime_s: float
    train_loss: Optional[float]
    new_tokens: int  # tokens trained on in this process's run (a resumed run's earlier ones excluded)


def build_callbacks(prep: Prepared, run: RunDir, reporter: Reporters, stop: StopRequest, main: bool, args) -> list:
    from transformers import EarlyStoppingCallback

    callbacks = [JsonlLogger(run), StopCallback(stop), EventCallback(reporter), *reporter.trainer_callbacks()]
    t = prep.cfg.train
    if t.compile == "auto" and why_not_auto(prep.cfg, args.device, args.world_size) is None:
        callbacks.append(AutoCompile(shapes_key(prep.model, prep.cfg, prep.precision), reporter.emit))
    if t.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_threshold))
    if "tensorboard" in t.report_to and main:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(run.tensorboard))))
    return callbacks


def fit(prep: Prepared, run: RunDir, args, reporter: Reporters, stop: StopRequest, checkpoint: Optional[Path],
        main: bool, checkpoint_files: dict[str, str]) -> Fitted:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from lmtune.training.trainer import LmtuneTrainer

    cfg = prep.cfg
    if cfg.train.on_nan == "skip" and args.world_size > 1:
        raise ConfigError("train.on_nan=skip would desynchronise the processes of a distributed run; use stop")
    trainer = LmtuneTrainer(
        model=prep.model,
        **optimizer_arguments(prep.model, cfg),
        args=args,
        train_dataset=prep.train_data.remove_columns([TRUNCATED]),
        eval_dataset=prep.eval_data,
        data_collator=prep.task.collator(packing=cfg.data.packing),
        callbacks=build_callbacks(prep, run, reporter, stop, main, args),
        task=prep.task,
        precision=prep.precision,
        on_nan=cfg.train.on_nan,
        checkpoint_files=checkpoint_files,
    )
    for callback in list(trainer.callback_handler.callbacks):
        # The Trainer's own bar, which prints a dict per log: the console reporter brings its own
        # (a subclass, added before it, so remove_callback(ProgressCallback) would take ours).
        if type(callback) in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(callback)
    # A resumed run's token counter includes the tokens before the checkpoint; its runtime does not.
    # (Read now: checkpoint rotation may delete the checkpoint during the run.)
    tokens_before = json.loads((checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0) if checkpoint else 0
    reporter.emit({"event": "phase", "name": "training"})
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    tokens = int(trainer.state.num_input_tokens_seen)
    return Fitted(trainer, result.metrics["train_runtime"], result.metrics.get("train_loss"), tokens - tokens_before)
