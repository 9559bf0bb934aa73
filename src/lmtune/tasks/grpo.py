"""GRPO: Group Relative Policy Optimisation (Shao et al., 2024), on prompts alone (data.format:
prompts), with rewards from functions (tasks/rewards.py).

Each training step, for every prompt of the batch the model (in eval mode, its current weights,
through lmtune's batched generation with a KV cache) samples `num_generations` answers; the reward
functions score them; each answer's advantage is its reward against its group's:

    A = (r − mean of the group) / (std of the group + 1e-4)     (scale_rewards: group; batch; none)

and the model learns from each answer's tokens, with the clipped objective and, when beta > 0, the
k3 estimate of the KL to the reference (the adapter switched off, or the frozen starting model):

    per token:  −min(ρ A, clip(ρ, 1−ε, 1+ε) A) + β [e^(ref−logp) − (ref−logp) − 1] ρ,   ρ = e^(logp − logp_old)

One update per set of answers, so logp_old is the current log-prob, detached (ρ = 1 in value), as
in TRL's default. The loss of a batch (`loss`): grpo averages each answer's tokens, then the
answers; bnpo averages all the batch's answer tokens; dr_grpo divides their sum by answers ×
max_completion_length. Log-probs are taken at the sampling temperature, as TRL does.
"""

from __future__ import annotations

import json
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.data.collate import PadCollator
from lmtune.data.examples import Prompt, from_batch
from lmtune.data.tokenize import IGNORE, clip_chat, text_budget, tokenize_segments
from lmtune.generation import Engine, SamplingParams
from lmtune.tasks.base import Task, register_task, target_logits
from lmtune.tasks.preference import Running, SharesPrompt
from lmtune.tasks.shared_prefix import SharedPrefixCollator, can_share_prefix, shared_prefix_logits
from lmtune.tasks.rewards import is_reference, load_reward


class GrpoOptions(SharesPrompt):
    """Answers sampled from the model, scored by reward functions, learnt from relative to their group."""

    name: Literal["grpo"] = "grpo"
    rewards: list[str] = Field(default_factory=list, description="reward functions: label_word, number, brevity, pattern, "
                               "or path/to/file.py:function / module:function")
    reward_weights: Optional[list[float]] = Field(None, description="one weight per reward function (default: all 1)")
    reward_pattern: Optional[str] = Field(None, description="the regular expression of the pattern reward")
    label_words: Optional[list[str]] = Field(None, description="label_word reward: the word for each label (default: the labels)")
    num_generations: int = Field(8, ge=2, description="answers sampled per prompt (a group)")
    max_completion_length: int = Field(64, gt=0, description="tokens an answer may have")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (the log-probs are taken at it too)")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k filtering")
    beta: float = Field(0.0, ge=0, description="weight of the KL to the reference (0: no reference model is run)")
    epsilon: float = Field(0.2, gt=0, description="the clipping range of the ratio")
    loss: Literal["grpo", "bnpo", "dr_grpo"] = Field("grpo", description="how a batch's token losses are averaged")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="divide advantages by the group's std, the batch's, or nothing")


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The unbiased (n − 1) standard deviation, ignoring NaN, as TRL's."""
    if dim is None:
        x, dim = x.flatten(), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim)
    return (torch.nansum((x - mean) ** 2, dim=dim) / (count - 1).clamp(min=1)).sqrt()


def advantages(rewards: torch.Tensor, group: int, scale: str) -> torch.Tensor:
    """(reward − its group's mean) / (std + 1e-4); rewards that are NaN (no function could score
    the answer) get 0 and count in no mean."""
    grouped = rewards.view(-1, group)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(group)
    out = rewards - mean
    if scale != "none":
        out = out / (std + 1e-4)
    return torch.nan_to_num(out, nan=0.0)


def combine(per_function: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted sum of the functions' rewards (None counts as 0), NaN where every function said None."""
    total = (per_function * weights).nansum(dim=1)
    total[torch.isnan(per_function).all(dim=1)] = torch.nan
    return total


class PromptCollator:
    """Prompts as lists of token ids (the model writes their answers during the step), left-padded
    into input_ids / attention_mask too, and the rows' fields."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        ids = [[self.pad_token_id] * (width - len(r["input_ids"])) + list(r["input_ids"]) for r in rows]
        mask = [[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"]) for r in rows]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "fields": [json.loads(r["fields"]) for r in rows]}


@register_task("grpo")
class GrpoTask(Task):
    Options = GrpoOptions
    examples = (Prompt,)
    columns = ("input_ids", "fields")
    metrics = {"reward": "max", "completion_length": "min"}
    metric_for_summary = "reward"
    can_pack = False
    why_not_packed = "samples its answers while training"

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        o = cfg.task
        if not o.rewards:
            raise ValueError("task grpo needs task.rewards: label_word, number, brevity, pattern, or file.py:function")
        unknown = [r for r in o.rewards if not is_reference(r)]
        if unknown:
            raise ValueError(f"task.rewards: {unknown[0]!r} is neither a built-in reward (label_word, number, brevity, pattern) "
                             "nor path/to/file.py:function or module:function")
        if o.reward_weights is not None and len(o.reward_weights) != len(o.rewards):
            raise ValueError("task.reward_weights needs one weight per entry of task.rewards")
        if o.max_completion_length >= cfg.data.max_length:
            raise ValueError("task.max_completion_length must be smaller than data.max_length (prompt and answer share it)")

    @classmethod
    def targets_per_row(cls, cfg):
        return cfg.task.max_completion_length

    @classmethod
    def sequences_per_row(cls, cfg):
        return cfg.task.num_generations

    @classmethod
    def shares_prompt(cls, cfg):
        return cfg.task.share_prompt and can_share_prefix(cfg)

    @classmethod
    def needs_reference(cls, cfg):
        return cfg.task.beta > 0

    @classmethod
    def generated_tokens_per_row(cls, cfg):
        return cfg.task.num_generations * cfg.task.max_completion_length

    def __init__(self, cfg, tokenizer, renderer):
        super().__init__(cfg, tokenizer, renderer)
        o = cfg.task
        self.reward_names = [r.rsplit(":", 1)[-1] for r in o.rewards]
        self.reward_functions = [load_reward(r, cfg) for r in o.rewards]
        self.weights = torch.tensor(o.reward_weights or [1.0] * len(o.rewards))
        self.running = Running()
        self.reference = None  # the frozen starting model, when beta > 0 and the method trains the base
        self.share_prompt = self.shares_prompt(cfg)

    def encode(self, batch):
        """The prompt rendered up to where the answer starts, cut from the left to leave room for it."""
        room = self.cfg.data.max_length - self.cfg.task.max_completion_length
        budget = text_budget(self.tokenizer, room)
        out = {"input_ids": [], "fields": [], "truncated": []}
        examples = from_batch(batch)
        prompts = [self.renderer.segments(clip_chat({"messages": ex["prompt"], "segments": []}, budget)["messages"],
                                          add_generation_prompt=True) for ex in examples]
        for ex, (ids, _) in zip(examples, tokenize_segments(self.tokenizer, self.renderer, prompts)):
            out["input_ids"].append(ids[-room:])
            out["fields"].append(json.dumps(ex["fields"]))
            out["truncated"].append(len(ids) > room)
        return out

    def collator(self, packing: bool = False):
        return PromptCollator(self.tokenizer.pad_token_id)

    def count_items(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] * self.cfg.task.num_generations  # answers

    def sample(self, model, inputs, params: SamplingParams, group: int) -> tuple[list[list[int]], list]:
        """(the prompts, each repeated `group` times, and their sampled completions), in eval mode."""
        prompts = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        repeated = [p for p in prompts for _ in range(group)]
        model = getattr(model, "module", model)  # under DistributedDataParallel, the model it wraps generates
        was_training = model.training
        model.eval()
        try:
            completions = Engine(model, self.tokenizer, self.renderer).generate(repeated, params)
        finally:
            model.train(was_training)
        return repeated, completions

    def score(self, prompts: list[list[int]], completions: list, fields: list[dict], group: int) -> torch.Tensor:
        """(answers × reward functions) rewards, NaN where a function said None."""
        rows = [f for f in fields for _ in range(group)]
        columns = {k: [row.get(k) for row in rows] for k in rows[0]} if rows else {}
        texts = [self.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        table = []
        for name, function in zip(self.reward_names, self.reward_functions):
            values = function(prompts=texts, completions=[c.text for c in completions],
                              completion_ids=[c.ids for c in completions], **columns)
            if len(values) != len(completions):
                raise RuntimeError(f"reward {name} returned {len(values)} values for {len(completions)} completions")
            table.append([float("nan") if v is None else float(v) for v in values])
        return torch.tensor(table, dtype=torch.float32).T

    def answers_batch(self, prompts: list[list[int]], completions: list) -> dict[str, torch.Tensor]:
        """The non-empty answers with their prompts: one row per prompt (the prompt once, then its
        answers) or one row per answer; `answer_of` numbers each target token's answer."""
        rows = [(p, c.ids) for p, c in zip(prompts, completions) if c.ids]
        as_rows = [(p + ids, [IGNORE] * len(p) + ids) for p, ids in rows]
        if self.share_prompt:
            groups, last = [], None
            for (p, _), row in zip(rows, as_rows):  # answers come grouped by prompt, in order
                if p is not last:
                    groups.append([])
                    last = p
                groups[-1].append(row)
            return SharedPrefixCollator(self.tokenizer.pad_token_id)(groups)
        batch = PadCollator(self.tokenizer.pad_token_id)([{"input_ids": ids, "labels": labels} for ids, labels in as_rows])
        batch["answer_of"] = torch.nonzero(batch["labels"][:, 1:] != IGNORE)[:, 0]  # in target_logits' order
        return batch

    def token_logps(self, model, batch: dict, virtual_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs of the answer tokens at the sampling temperature, each token's answer)."""
        if "target_answer" in batch:
            logits, targets, answer_of = shared_prefix_logits(model, batch)
        else:
            (logits, targets), answer_of = target_logits(model, batch, virtual_tokens), batch["answer_of"]
        logps = F.log_softmax(logits / self.cfg.task.temperature, dim=-1)
        return torch.gather(logps, 1, targets[:, None]).squeeze(1), answer_of

    def loss(self, model, inputs):
        o = self.cfg.task
        params = SamplingParams(max_new_tokens=o.max_completion_length, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k)
        prompts, completions = self.sample(model, inputs, params, o.num_generations)
        per_function = self.score(prompts, completions, inputs["fields"], o.num_generations)
        rewards = combine(per_function, self.weights)
        advantage = advantages(rewards, o.num_generations, o.scale_rewards).to(inputs["input_ids"].device)
        kept = torch.tensor([bool(c.ids) for c in completions], device=advantage.device)
        if not kept.any():  # every answer ended at once: nothing to learn from this batch
            return torch.zeros((), device=advantage.device, requires_grad=True), len(completions)
        batch = {k: v.to(advantage.device) for k, v in self.answers_batch(prompts, completions).items()}
        logps, row_of = self.token_logps(model, batch)  # row_of: the answer each token belongs to
        answers = int(kept.sum())
        token_advantage = advantage[kept][row_of]
        ratio = torch.exp(logps - logps.detach())  # one update per set of answers: 1, with the policy's gradient
        per_token = -torch.min(ratio * token_advantage, torch.clamp(ratio, 1 - o.epsilon, 1 + o.epsilon) * token_advantage)
        kl = None
        if o.beta > 0:
            with torch.no_grad():
                reference = self.reference_token_logps(model, batch)[0]
            kl = (torch.exp(reference - logps) - (reference - logps) - 1) * ratio
            per_token = per_token + o.beta * kl
        n = len(completions)
        lengths = torch.bincount(row_of, minlength=answers).float()
        if o.loss == "grpo":  # each answer's token mean, summed (the trainer divides by the answers)
            total = (torch.zeros(answers, device=per_token.device).index_add(0, row_of, per_token) / lengths.clamp(min=1)).sum()
        elif o.loss == "bnpo":
            total = per_token.sum() / max(per_token.numel(), 1) * n
        else:  # dr_grpo
            total = per_token.sum() / o.max_completion_length
        self.running.add(**self.reward_metrics(rewards, per_function), reward_std=nanstd(rewards).reshape(1),
                         completion_length=lengths,
                         frac_reward_zero_std=(nanstd(rewards.view(-1, o.num_generations), dim=1) < 1e-6).float(),
                         **({"kl": kl.detach()} if kl is not None else {}))
        return total, n

    def reward_metrics(self, rewards: torch.Tensor, per_function: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rewards that could be scored, in total and per function (NaN: none could)."""
        return {"reward": rewards[~torch.isnan(rewards)],
                **{f"reward_{name}": col[~torch.isnan(col)] for name, col in zip(self.reward_names, per_function.T)}}

    def reference_token_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is not None:
            return self.token_logps(self.reference, batch)
        with model.disable_adapter():
            return self.token_logps(model, batch, virtual_tokens=0)

    def training_metrics(self) -> dict[str, float]:
        return self.running.pop()

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        """Each prompt answered once, greedily, and scored: the mean reward of held-out prompts."""
        o = self.cfg.task
        params = SamplingParams(max_new_tokens=o.max_completion_length)
        total = Running()
        for batch in self.eval_batches(model, dataset, batch_size, precision):
            prompts, completions = self.sample(model, batch, params, 1)
            per_function = self.score(prompts, completions, batch["fields"], 1)
            rewards = combine(per_function, self.weights)
            total.add(**self.reward_metrics(rewards, per_function),
                      completion_length=torch.tensor([float(len(c.ids)) for c in completions]))
        return total.pop()
