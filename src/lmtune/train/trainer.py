"""A thin Trainer subclass: the loss and the evaluation come from the task."""

from __future__ import annotations

from transformers import Trainer


class LmtuneTrainer(Trainer):
    # compute_loss below returns a loss already normalised by the number of targets in the whole
    # accumulated batch, so the Trainer must not divide it by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, task, precision: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task
        self.precision = precision
        # Makes the Trainer count the targets of the accumulated batch (num_items_in_batch).
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, count = self.task.loss(model, inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
        loss = loss_sum / denominator
        if self.args.average_tokens_across_devices and self.args.world_size > 1 and num_items_in_batch is not None:
            loss = loss * self.args.world_size  # DDP averages gradients over processes
        return (loss, None) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The task's own metrics (accuracy, f1, loss, perplexity ...), logged with a prefix."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        metrics = self.task.evaluate(self.model, dataset, self.args.per_device_eval_batch_size, self.precision)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
