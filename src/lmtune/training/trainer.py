"""A thin Trainer subclass: the loss and the evaluation come from the task; checkpoints are
published atomically; a non-finite loss stops the run (or is skipped) before it reaches the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from lmtune.atomic import write_text_atomic
from lmtune.errors import LmtuneError
from lmtune.training.checkpoint import STAGING, latest_checkpoint, publish, rotate


class NonFiniteLoss(LmtuneError):
    """The training loss became nan or inf (train.on_nan: stop)."""


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Batches of similar lengths in an order drawn from (seed, epoch) alone. transformers' own
    draws it from the global RNG when the epoch's iterator is made: a run resumed inside a later
    epoch made it before the checkpoint's RNG state was restored, so it trained that epoch's
    remaining batches in another order than the uninterrupted run (different weights, by 1e-4)."""

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before each epoch's iterator
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class LmtuneTrainer(Trainer):
    # compute_loss below returns a loss already normalised by the number of targets in the whole
    # accumulated batch, so the Trainer must not divide it by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, task, precision: str, on_nan: str = "stop", checkpoint_files: dict[str, str] | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint_files = checkpoint_files or {}  # name -> text written into every checkpoint
        self.task = task
        self.precision = precision
        self.on_nan = on_nan
        self.skipped_nonfinite = 0  # micro-batches dropped under on_nan: skip
        self._staging = False
        # Makes the Trainer count the targets of the accumulated batch (num_items_in_batch).
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, count = self.task.loss(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        loss = loss_sum / denominator
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and num_items_in_batch is not None:
            loss = loss * self.args.world_size  # DDP averages gradients over processes
        if model.training and not torch.isfinite(loss.detach()):
            loss = self._non_finite(loss)
        return (loss, None) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """What the loss is averaged over: the task's items (preference pairs) when it counts them,
        else the Trainer's count of target tokens."""
        counts = [self.task.count_items(batch) for batch in batch_samples]
        if not batch_samples or counts[0] is None:
            return super()._get_num_items_in_batch(batch_samples, device)
        total = torch.tensor(sum(counts), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=self.args.data_seed
                                                   if self.args.data_seed is not None else self.args.seed)
        return sampler

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: add what the task measured while training (reward accuracy ...)
            logs.update(self.task.training_metrics())
        super().log(logs, *args, **kwargs)

    def _non_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop before the bad gradient touches the weights, or drop this micro-batch (a zero loss
        with no path to the parameters adds nothing to the accumulated gradients)."""
        step = self.state.global_step + 1
        if self.on_nan == "skip":
            self.skipped_nonfinite += 1
            return torch.zeros((), device=loss.device, requires_grad=True)
        last = latest_checkpoint(Path(self.args.output_dir))
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written (train.save_steps)"
        raise NonFiniteLoss(f"the training loss became {loss.item()} at step {step}; {kept}. Lower train.lr, keep "
                            "train.max_grad_norm on, prefer bf16 to fp16, or set train.on_nan=skip to drop such batches")

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The task's own metrics (accuracy, f1, loss, perplexity ...), logged with a prefix."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        metrics = self.task.evaluate(self.model, dataset, self.args.per_device_eval_batch_size, self.precision)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being written, the Trainer writes it under the staging directory.
        run_dir = super()._get_output_dir(trial)
        return str(Path(run_dir) / STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written to .staging/ and renamed into place when complete."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staged, final = run_dir / STAGING / name, run_dir / name
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            for file_name, text in self.checkpoint_files.items():
                write_text_atomic(staged / file_name, text)
            if self.state.best_model_checkpoint == str(staged):  # this step is the best so far
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staged / "trainer_state.json"))
            publish(staged, final)
            rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()
