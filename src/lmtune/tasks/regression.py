"""Regression with a one-output head (num_labels=1): a score for a text or a sentence pair (STS).
Loss: MSE, L1 or Huber; metrics: Pearson and Spearman correlation, RMSE."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.data.examples import ScoredText
from lmtune.model.load import ModelSpec
from lmtune.tasks.base import TaskOptions, register_task
from lmtune.tasks.seq_cls import SeqClsTask, head_logits

LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.norm() * y.norm()).item()
    return (x @ y).item() / denominator if denominator else 0.0


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties averaged, as Spearman's correlation needs."""
    order = x.argsort()
    r = torch.empty_like(x)
    r[order] = torch.arange(len(x), dtype=x.dtype)
    for value in x.unique():
        tied = x == value
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


class RegressionOptions(TaskOptions):
    """A number predicted by a one-output head."""

    name: Literal["regression"] = "regression"
    loss: Literal["mse", "l1", "huber"] = Field("mse", description="the loss")


@register_task("regression")
class RegressionTask(SeqClsTask):
    Options = RegressionOptions
    examples = (ScoredText,)
    metric_for_summary = "pearson"
    metrics = {"pearson": "max", "spearman": "max", "rmse": "min", "loss": "min"}
    labels_name = None
    can_distill = False

    @classmethod
    def spec(cls, cfg):
        return ModelSpec("AutoModelForSequenceClassification", (("num_labels", 1), ("problem_type", "regression")))

    def loss(self, model, inputs):
        values = head_logits(model, inputs).squeeze(-1)
        labels = inputs["labels"].float()
        return LOSSES[self.cfg.task.loss](values, labels, reduction="sum"), labels.numel()

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        preds, golds = [], []
        for batch in self.eval_batches(model, dataset, batch_size, precision):
            preds.append(head_logits(model, batch).squeeze(-1).cpu())
            golds.append(batch["labels"].float().cpu())
        p, g = torch.cat(preds).double(), torch.cat(golds).double()
        return {"pearson": pearson(p, g), "spearman": pearson(ranks(p), ranks(g)),
                "rmse": (p - g).pow(2).mean().sqrt().item(), "loss": LOSSES[self.cfg.task.loss](p, g).item()}

    def write_artifacts(self, out) -> None:
        pass
