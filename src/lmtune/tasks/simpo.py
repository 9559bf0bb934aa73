"""SimPO: Simple Preference Optimisation (Meng et al., 2024): the answers' average log-probs are the
rewards, with a target margin γ and no reference model.

    loss = −(1−ε) log σ(β (ℓ_w − ℓ_l) − γ) − ε log σ(−(β (ℓ_w − ℓ_l) − γ))  [+ α NLL(y_w)]

ℓ: log-prob averaged over the answer's tokens; γ an absolute margin (TRL's simpo_gamma); ε label
smoothing; α (sft_weight) adds the chosen answers' NLL, as TRL's CPOTrainer does with cpo_alpha
(0 here: the paper's SimPO). Rewards: β × ℓ.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.tasks.base import register_task
from lmtune.tasks.preference import PairTask, SharesPrompt


class SimpoOptions(SharesPrompt):
    """Length-normalised rewards with a target margin; no reference model."""

    name: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0, description="scale of the length-normalised reward (the paper uses 2-2.5)")
    gamma: float = Field(0.5, ge=0, description="the target reward margin")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="the share of pairs assumed wrongly labelled")
    sft_weight: float = Field(0.0, ge=0, description="add this times the chosen answers' NLL (CPO-SimPO); 0: SimPO")


def simpo_losses(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor, beta: float, gamma: float,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    z = beta * (chosen_avg - rejected_avg) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@register_task("simpo")
class SimpoTask(PairTask):
    Options = SimpoOptions

    def pair_losses(self, chosen, rejected, counts, model, inputs):
        o = self.cfg.task
        chosen_count, rejected_count = counts.clamp(min=1).chunk(2)
        chosen_avg, rejected_avg = chosen / chosen_count, rejected / rejected_count
        losses = simpo_losses(chosen_avg, rejected_avg, o.beta, o.gamma, o.label_smoothing)
        if o.sft_weight:
            losses = losses - o.sft_weight * chosen.sum() / chosen_count.sum() * torch.ones_like(losses)
        return losses, o.beta * chosen_avg, o.beta * rejected_avg
