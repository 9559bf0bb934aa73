"""KTO: Kahneman-Tversky Optimisation (Ethayarajh et al., 2024), on single answers marked good or
bad (data.format: unpaired), against a reference model.

With r = log π(y|x) − log π_ref(y|x) (summed over the answer's tokens) and z0 the KL estimate:

    good answer:  w_good × (1 − σ(β (r − z0)))
    bad answer:   w_bad  × (1 − σ(β (z0 − r)))

z0 = max(0, mean over the batch of [log π(y'|x) − log π_ref(y'|x)]) for mismatched pairs: each
prompt with the previous row's answer in the batch, under no gradient, as TRL does. The loss is the
mean over the batch's answers. Rewards: β × r.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from lmtune.data.collate import PadCollator
from lmtune.data.examples import Unpaired, from_batch
from lmtune.data.tokenize import IGNORE, clip_chat, text_budget, tokenize_segments, truncate
from lmtune.tasks.base import TaskOptions, register_task
from lmtune.tasks.preference import PairTask, Running, answer_segments, sequence_logps


class KtoOptions(TaskOptions):
    """Single answers marked good or bad, against a reference model."""

    name: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="how far from the reference the model may move")
    desirable_weight: float = Field(1.0, gt=0, description="weight of the good answers' loss")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of the bad answers' loss")


def kto_losses(rewards_ratio: torch.Tensor, good: torch.Tensor, kl: torch.Tensor, beta: float,
               desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per-answer losses from the log-ratios r, whether each answer is good, and the KL estimate z0."""
    good_losses = desirable_weight * (1 - torch.sigmoid(beta * (rewards_ratio - kl)))
    bad_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - rewards_ratio)))
    return torch.where(good, good_losses, bad_losses)


class UnpairedCollator:
    """n answers as 2n padded rows: each prompt with its answer, then each prompt with the previous
    row's answer (the mismatched pairs of the KL estimate)."""

    def __init__(self, pad_token_id: int):
        self.pad = PadCollator(pad_token_id)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        own = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
        mismatched = []
        for i, r in enumerate(rows):
            other = rows[i - 1]  # the first row takes the last one's answer
            start = other["prompt_length"]
            mismatched.append({"input_ids": r["input_ids"][: r["prompt_length"]] + other["input_ids"][start:],
                               "labels": [IGNORE] * r["prompt_length"] + other["labels"][start:]})
        batch = self.pad(own + mismatched)
        batch["label"] = torch.tensor([bool(r["label"]) for r in rows])
        return batch


@register_task("kto")
class KtoTask(PairTask):
    Options = KtoOptions
    examples = (Unpaired,)
    columns = ("input_ids", "labels", "prompt_length", "label")
    metrics = {"margin": "max", "loss": "min", "kl": "min", "good_reward": "max", "bad_reward": "min"}
    metric_for_summary = "margin"
    why_not_packed = "compares each answer with another prompt's, batched side by side"
    uses_reference = True

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.train.batch_size < 2:
            raise ValueError("task kto estimates its KL term from the other answers of a batch; set train.batch_size >= 2")

    def encode(self, batch):
        budget = text_budget(self.tokenizer, self.cfg.data.max_length)
        out = {name: [] for name in (*self.columns, "truncated")}
        examples = from_batch(batch)
        conversations = []
        for ex in examples:
            clipped = clip_chat({"messages": ex["prompt"] + ex["completion"], "segments": []}, budget)["messages"]
            conversations.append(answer_segments(self.renderer, clipped[: len(ex["prompt"])], clipped[len(ex["prompt"]):]))
        for ex, (ids, labels) in zip(examples, tokenize_segments(self.tokenizer, self.renderer, conversations)):
            ids, labels, cut = truncate(ids, labels, self.cfg.data.max_length)
            prompt_length = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
            for name, value in (("input_ids", ids), ("labels", labels), ("prompt_length", prompt_length),
                                ("label", int(ex["label"])), ("truncated", cut)):
                out[name].append(value)
        return out

    def collator(self, packing: bool = False):
        return UnpairedCollator(self.tokenizer.pad_token_id)

    def count_items(self, batch: dict) -> int:
        return batch["label"].shape[0]

    def scores(self, model, inputs) -> dict[str, torch.Tensor]:
        n = inputs["label"].shape[0]
        own = {k: v[:n] for k, v in inputs.items() if k != "label"}
        mismatched = {k: v[n:] for k, v in inputs.items() if k != "label"}
        logps, _ = sequence_logps(model, own)
        with torch.no_grad():
            kl_logps, _ = sequence_logps(model, mismatched)
        reference, reference_kl = self.reference_logps(model, inputs).split(n)
        kl = (kl_logps - reference_kl).mean().clamp(min=0).detach()
        o = self.cfg.task
        ratios = logps - reference
        good = inputs["label"].bool()
        losses = kto_losses(ratios, good, kl, o.beta, o.desirable_weight, o.undesirable_weight)
        rewards = o.beta * ratios.detach()
        return {"losses": losses, "rewards": rewards, "good": good, "kl": kl}

    def loss(self, model, inputs):
        s = self.scores(model, inputs)
        if model.training:
            self.running.add(kl=s["kl"].reshape(1), good_reward=s["rewards"][s["good"]], bad_reward=s["rewards"][~s["good"]])
        return s["losses"].sum(), s["losses"].numel()

    def training_metrics(self) -> dict[str, float]:
        out = self.running.pop()
        if "good_reward" in out and "bad_reward" in out:
            out["margin"] = out["good_reward"] - out["bad_reward"]
        return out

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        total = Running()
        for batch in self.eval_batches(model, dataset, max(2, batch_size // 2), precision):
            s = self.scores(model, batch)
            total.add(loss=s["losses"], kl=s["kl"].reshape(1), good_reward=s["rewards"][s["good"]],
                      bad_reward=s["rewards"][~s["good"]])
        out = total.pop()
        out["margin"] = out.get("good_reward", 0.0) - out.get("bad_reward", 0.0)
        return out
