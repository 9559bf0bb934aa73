"""ORPO: Odds Ratio Preference Optimisation (Hong et al., 2024): SFT on the chosen answer plus an
odds-ratio term, with no reference model.

With ℓ_w, ℓ_l the answers' log-probs averaged over their tokens and odds(y) = p / (1 − p):

    loss = NLL(y_w) − λ log σ( log odds(y_w) − log odds(y_l) ),
    log odds(y) = ℓ − log(1 − e^ℓ)

NLL is the mean cross-entropy over the chosen answers' tokens (the paper's L_SFT; TRL's ORPOTrainer
counts the prompt tokens too). Rewards: λ × ℓ.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.tasks.base import register_task
from lmtune.tasks.preference import PairTask, SharesPrompt


class OrpoOptions(SharesPrompt):
    """SFT on the chosen answer plus an odds-ratio preference term; no reference model."""

    name: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="λ, the weight of the odds-ratio term")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) for x < 0, accurate near 0 and far from it."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio_terms(chosen_avg: torch.Tensor, rejected_avg: torch.Tensor) -> torch.Tensor:
    """log σ(log odds(y_w) − log odds(y_l)) per pair, from the averaged log-probs, in fp32."""
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    return F.logsigmoid(log_odds)


@register_task("orpo")
class OrpoTask(PairTask):
    Options = OrpoOptions

    def pair_losses(self, chosen, rejected, counts, model, inputs):
        chosen_count, rejected_count = counts.clamp(min=1).chunk(2)
        chosen_avg, rejected_avg = chosen / chosen_count, rejected / rejected_count
        # The NLL is a mean over all the chosen answers' tokens of the batch; spread over the pairs
        # so that the per-pair losses sum to it (the trainer divides by the number of pairs).
        nll_per_pair = -chosen.sum() / chosen_count.sum() * torch.ones_like(chosen)
        beta = self.cfg.task.beta
        return nll_per_pair - beta * odds_ratio_terms(chosen_avg, rejected_avg), beta * chosen_avg, beta * rejected_avg
