"""Preference tuning on pairs of answers: DPO (with the sigmoid, IPO, hinge and robust losses),
ORPO and SimPO. What they share lives here: encoding a pair (the prompt rendered once, each
answer's tokens the targets, one BOS, the answer's turn terminator trained), batching the pairs as
one row per pair (the prompt once, then both answers: tasks/shared_prefix.py) or, where the model
cannot share, 2B rows (chosen, then rejected), each answer's log-probability from the LM head run
at its tokens only, the reference model, and the metrics (reward accuracy, margins, log-probs).

Log-probabilities, as TRL computes them: the sum over an answer's tokens of log p(token | what
comes before) (DPO, its variants), or that sum divided by the answer's token count (IPO's
normalisation, ORPO, SimPO).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from pydantic import Field

from lmtune.data.collate import PadCollator
from lmtune.data.examples import Preference, from_batch
from lmtune.data.tokenize import IGNORE, clip_chat, text_budget, tokenize_segments, truncate
from lmtune.tasks.base import Task, TaskOptions, target_logits
from lmtune.tasks.reference_logps import batch_reference_logps
from lmtune.tasks.shared_prefix import SharedPrefixCollator, can_share_prefix, shared_prefix_logits
from lmtune.tasks.token_cross_entropy import token_cross_entropy


class SharesPrompt(TaskOptions):
    """The option of the tasks whose answers share a prompt (pairs, GRPO's groups)."""

    share_prompt: bool = Field(True, description="compute a prompt once for all its answers (one row: the prompt, "
                               "then each answer); false: one row per answer. Off anyway for prompt methods and flash attention")


def answer_segments(renderer, prompt: list[dict], answer: list[dict]) -> list[tuple[str, bool]]:
    """The conversation prompt + answer as segments, with only the answer's assistant turns as
    targets (a prompt's own earlier assistant turns are context, not what is compared)."""
    prompt_text = renderer.prompt(prompt)
    segments, done = [(prompt_text, False)], 0
    for text, target in renderer.segments(prompt + answer):
        start = max(len(prompt_text) - done, 0)  # the part of this segment after the prompt
        if text[start:]:
            segments.append((text[start:], target))
        done += len(text)
    return segments


def sequence_logps(model, inputs: dict, virtual_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per answer: the sum of log p over its target tokens, per answer: how many target tokens),
    chosen answers first, then rejected. The LM head runs only at the target positions."""
    if "target_answer" in inputs:  # one row per pair: answers numbered chosen, rejected, chosen, ...
        logits, targets, answers = shared_prefix_logits(model, inputs)
        n = int(inputs["answers"])
        answers = answers % 2 * (n // 2) + answers // 2  # chosen ones first
    else:
        logits, targets = target_logits(model, inputs, virtual_tokens, upcast=False)
        next_labels = inputs["labels"][:, 1:]
        answers = torch.nonzero(next_labels != IGNORE)[:, 0]  # the row of each target, in target_logits' order
        n = inputs["labels"].shape[0]
    token_logps = -token_cross_entropy(logits, targets)
    sums = token_logps.new_zeros(n).index_add(0, answers, token_logps)
    counts = torch.bincount(answers, minlength=n).to(token_logps.dtype)
    return sums, counts


class PairCollator:
    """A batch of pairs as one row each (the prompt, then both answers), or, when the prompt is not
    shared, as 2B padded rows: the chosen answers, then the rejected ones."""

    def __init__(self, pad_token_id: int, share_prompt: bool = False):
        self.pad = PadCollator(pad_token_id)
        self.shared = SharedPrefixCollator(pad_token_id) if share_prompt else None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.shared:
            batch = self.shared([[(r["input_ids"], r["labels"]), (r["rejected_input_ids"], r["rejected_labels"])] for r in rows])
        else:
            chosen = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
            rejected = [{"input_ids": r["rejected_input_ids"], "labels": r["rejected_labels"]} for r in rows]
            batch = self.pad(chosen + rejected)
        reference = batch_reference_logps(rows)  # task.precompute_reference
        if reference is not None:
            batch["reference_logps"] = reference
        return batch


class Running:
    """Training metrics summed over the micro-batches since the last log, then averaged."""

    def __init__(self):
        self.sums, self.counts = defaultdict(float), defaultdict(int)

    def add(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self.sums[name] += float(value.sum())
            self.counts[name] += value.numel()

    def pop(self) -> dict[str, float]:
        out = {name: self.sums[name] / self.counts[name] for name in self.sums if self.counts[name]}
        self.sums.clear()
        self.counts.clear()
        return out


class PairTask(Task):
    """Base class of the tasks trained on pairs of answers; a subclass says how a pair is scored."""

    examples = (Preference,)
    columns = ("input_ids", "labels", "rejected_input_ids", "rejected_labels")
    metrics = {"reward_accuracy": "max", "margin": "max", "loss": "min", "chosen_logp": "max", "rejected_logp": "min"}
    metric_for_summary = "reward_accuracy"
    can_pack = False
    why_not_packed = "compares two answers to one prompt, batched side by side"

    @classmethod
    def sequences_per_row(cls, cfg):
        return 2  # chosen and rejected (KTO: an answer, and the prompt with another row's answer)

    @classmethod
    def shares_prompt(cls, cfg):
        return getattr(cfg.task, "share_prompt", False) and can_share_prefix(cfg)

    def __init__(self, cfg, tokenizer, renderer):
        super().__init__(cfg, tokenizer, renderer)
        self.running = Running()
        self.reference = None  # the frozen starting model, for methods that train the base (loading.attach_reference)
        self.share_prompt = self.shares_prompt(cfg)

    def encode(self, batch):
        budget = text_budget(self.tokenizer, self.cfg.data.max_length)
        out = {name: [] for name in (*self.columns, "truncated")}
        for ex in from_batch(batch):
            pair = []
            for answer in (ex["chosen"], ex["rejected"]):
                clipped = clip_chat({"messages": ex["prompt"] + answer, "segments": []}, budget)["messages"]
                pair.append(answer_segments(self.renderer, clipped[: len(ex["prompt"])], clipped[len(ex["prompt"]):]))
            (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = tokenize_segments(self.tokenizer, self.renderer, pair)
            chosen_ids, chosen_labels, cut_c = truncate(chosen_ids, chosen_labels, self.cfg.data.max_length)
            rejected_ids, rejected_labels, cut_r = truncate(rejected_ids, rejected_labels, self.cfg.data.max_length)
            for name, value in (("input_ids", chosen_ids), ("labels", chosen_labels), ("rejected_input_ids", rejected_ids),
                                ("rejected_labels", rejected_labels), ("truncated", cut_c or cut_r)):
                out[name].append(value)
        return out

    def collator(self, packing: bool = False):
        return PairCollator(self.tokenizer.pad_token_id, self.share_prompt)

    def count_items(self, batch: dict) -> int:
        """Pairs in a batch: what the loss is averaged over (not tokens)."""
        return int(batch["answers"]) // 2 if "answers" in batch else batch["input_ids"].shape[0] // 2

    def reference_logps(self, model, inputs) -> torch.Tensor:
        """The reference's log-probs of the answers: the same model with its adapter switched off
        (no second copy in memory), the frozen starting model (methods that train the base, whose
        copy loading.attach_reference made), or, before the method is applied (the zero-shot
        measurement), the model itself."""
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.reference, inputs)[0]
            if hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    return sequence_logps(model, inputs, virtual_tokens=0)[0]
            return sequence_logps(model, inputs)[0]

    def pair_losses(self, chosen, rejected, counts, model, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-pair losses, chosen rewards, rejected rewards) from the answers' summed log-probs."""
        raise NotImplementedError

    def scores(self, model, inputs) -> dict[str, torch.Tensor]:
        logps, counts = sequence_logps(model, inputs)
        chosen, rejected = logps.chunk(2)
        losses, chosen_rewards, rejected_rewards = self.pair_losses(chosen, rejected, counts, model, inputs)
        return {"losses": losses, "chosen_rewards": chosen_rewards.detach(), "rejected_rewards": rejected_rewards.detach(),
                "chosen_logps": chosen.detach(), "rejected_logps": rejected.detach()}

    def loss(self, model, inputs):
        s = self.scores(model, inputs)
        if model.training:
            self.running.add(reward_accuracy=accuracy(s["chosen_rewards"], s["rejected_rewards"]),
                             margin=s["chosen_rewards"] - s["rejected_rewards"], chosen_reward=s["chosen_rewards"],
                             rejected_reward=s["rejected_rewards"], chosen_logp=s["chosen_logps"], rejected_logp=s["rejected_logps"])
        return s["losses"].sum(), s["losses"].numel()

    def training_metrics(self) -> dict[str, float]:
        return self.running.pop()

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        total = Running()
        for batch in self.eval_batches(model, dataset, max(1, batch_size // 2), precision):
            s = self.scores(model, batch)
            total.add(loss=s["losses"], reward_accuracy=accuracy(s["chosen_rewards"], s["rejected_rewards"]),
                      margin=s["chosen_rewards"] - s["rejected_rewards"], chosen_logp=s["chosen_logps"],
                      rejected_logp=s["rejected_logps"])
        return total.pop()


def accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """1 where the chosen answer's reward is higher, 0 where lower, and 0.5 for a tie (the reference
    itself scores every pair a tie: 0.5 before training, not 0)."""
    return (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
