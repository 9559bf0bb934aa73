"""DPO: Direct Preference Optimisation (Rafailov et al., 2023), and its loss variants.

With the answers' summed log-probs under the model (π) and the reference (π_ref), and
Δ = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]:

    sigmoid (DPO)   −log σ(β Δ)
    ipo             (Δ_avg − 1/(2β))², with each log-ratio divided by its answer's token count (Azar et al., 2023)
    hinge           max(0, 1 − β Δ)   (SLiC, Zhao et al., 2023)
    robust          [−(1−ε) log σ(β Δ) + ε log σ(−β Δ)] / (1 − 2ε), for labels flipped with probability ε
                    (Chowdhury et al., 2024)

Rewards: β × each answer's log-ratio. The reference is the model with its adapter switched off
(adapter methods) or a frozen copy of the starting model (full, freeze).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.tasks.base import register_task
from lmtune.tasks.preference import PairTask, SharesPrompt


class DpoOptions(SharesPrompt):
    """Direct preference optimisation against a reference model."""

    name: Literal["dpo"] = "dpo"
    loss: Literal["sigmoid", "ipo", "hinge", "robust"] = Field("sigmoid", description="sigmoid (DPO), ipo, hinge or robust")
    beta: float = Field(0.1, gt=0, description="how far from the reference the model may move (smaller: further)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust: the share of pairs assumed wrongly labelled")
    precompute_reference: bool = Field(False, description="compute the reference's log-probs of every pair once before "
                                       "training, cached on disk: no reference pass per step and no frozen copy")


def dpo_losses(delta: torch.Tensor, beta: float, loss: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair losses from the difference of the log-ratios (sums; ipo gets the averaged ones)."""
    if loss == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss == "ipo":
        return (delta - 1 / (2 * beta)) ** 2
    eps = label_smoothing  # robust
    return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)


@register_task("dpo")
class DpoTask(PairTask):
    Options = DpoOptions
    uses_reference = True

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.task.precompute_reference and cfg.data.streaming:
            raise ValueError("task.precompute_reference reads every pair before training; it cannot with data.streaming")

    @classmethod
    def reference_precomputed(cls, cfg):
        return cfg.task.precompute_reference

    def pair_losses(self, chosen, rejected, counts, model, inputs):
        o = self.cfg.task
        reference = inputs.get("reference_logps")
        if reference is None:
            reference = self.reference_logps(model, inputs)
        ref_chosen, ref_rejected = reference.to(chosen.dtype).chunk(2)
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        if o.loss == "ipo":
            chosen_count, rejected_count = counts.clamp(min=1).chunk(2)
            delta = chosen_ratio / chosen_count - rejected_ratio / rejected_count
        else:
            delta = chosen_ratio - rejected_ratio
        losses = dpo_losses(delta, o.beta, o.loss, o.label_smoothing)
        return losses, o.beta * chosen_ratio, o.beta * rejected_ratio
