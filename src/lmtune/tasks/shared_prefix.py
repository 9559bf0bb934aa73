"""Answers that share a prompt, computed with the prompt once.

A DPO pair is one prompt and two answers; a GRPO group is one prompt and `num_generations`
answers. Batched as separate rows, the prompt's tokens go through the model once per answer. Here
a group is one row instead: the prompt, then each answer after it, every answer attending to the
prompt and to itself but not to its siblings (a custom 4D attention mask), and each answer's
position ids continuing from the prompt's end, as if it were alone after it. Each answer token's
log-prob is then the one it has in its own row (tests/test_shared_prefix.py checks that to 1e-5),
for the price of the prompt once.

The prompt is the longest common beginning of the group's rows that is not a target. The token that
starts an answer is predicted from the prompt's last position, so that position's logits serve every
answer of the group; the LM head still runs only where a target is predicted.

Needs a model that takes a 4D mask and position ids (the decoder-only models of transformers with
sdpa or eager attention) and no virtual tokens before the row (prompt tuning, P-tuning, prefix
tuning): `can_share_prefix` says when.
"""

from __future__ import annotations

import torch

from lmtune.data.tokenize import IGNORE


def can_share_prefix(cfg) -> bool:
    """Whether a run's model and method allow one row per group (config-level facts)."""
    from lmtune.methods import METHODS

    return (METHODS.get(cfg.method.name).virtual_tokens == "none"
            and cfg.model.attn_implementation in (None, "sdpa", "eager"))


def common_prefix(rows: list[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens every row of the group has the same and none of them trains on."""
    first_ids = rows[0][0]
    n = min(len(ids) for ids, _ in rows)
    for i in range(n):
        if any(ids[i] != first_ids[i] or labels[i] != IGNORE for ids, labels in rows):
            return i
    return n


class SharedPrefixCollator:
    """Groups of (input_ids, labels) rows -> one row per group: the prompt, then each answer.

    The batch: input_ids and position_ids (B, T), the boolean mask the model attends with
    (shared_mask, B × 1 × T × T), a plain attention_mask (B, T: 1 on every token, 0 on padding; the
    Trainer counts the tokens trained on from it), and for
    every target token its row, the position whose logits predict it, its id, and its answer's
    index (answers numbered group by group, in the order given)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, groups: list[list[tuple[list[int], list[int]]]]) -> dict[str, torch.Tensor]:
        laid_out = [self.layout(group) for group in groups]
        width = max(len(ids) for ids, *_ in laid_out)
        batch = len(groups)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1, 1)  # padding attends to itself: no empty softmax
        targets: list[tuple[int, int, int, int]] = []
        answers = 0
        for row, (ids, positions, blocks, row_targets) in enumerate(laid_out):
            n = len(ids)
            input_ids[row, :n] = torch.tensor(ids)
            position_ids[row, :n] = torch.tensor(positions)
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            for start, end in blocks:  # an answer sees none of the answers before it in the row
                causal[end:, start:end] = False
            mask[row, 0, :n, :n] = causal
            targets += [(row, at, token, answers + answer) for at, token, answer in row_targets]
            answers += len(blocks)
        rows, at, token, answer = (torch.tensor(column) for column in zip(*targets))
        lengths = torch.tensor([len(ids) for ids, *_ in laid_out])
        padding = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return {"input_ids": input_ids, "position_ids": position_ids, "shared_mask": mask, "attention_mask": padding,
                "target_row": rows, "target_at": at, "target_id": token, "target_answer": answer,
                "answers": torch.tensor(answers)}

    @staticmethod
    def layout(group: list[tuple[list[int], list[int]]]):
        """(ids, position ids, each answer's [start, end) in the row, targets as (predicting
        position, token id, answer number within the group))."""
        shared = common_prefix(group)
        ids, positions, blocks, targets = list(group[0][0][:shared]), list(range(shared)), [], []
        for number, (row_ids, labels) in enumerate(group):
            start = len(ids)
            ids += row_ids[shared:]
            positions += range(shared, len(row_ids))
            blocks.append((start, len(ids)))
            for i in range(max(shared, 1), len(row_ids)):  # token 0 of a row is never predicted
                if labels[i] != IGNORE:
                    before = start + i - 1 - shared if i - 1 >= shared else i - 1  # the prompt's last token, or the answer's
                    targets.append((before, labels[i], number))
        return ids, positions, blocks, targets


def shared_prefix_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, vocab) fp32 at each target, the targets (N,), each target's answer index (N,))."""
    keep = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    keep[batch["target_row"], batch["target_at"]] = True
    mask = batch["shared_mask"]
    config = getattr(getattr(model, "module", model), "config", None)  # under DistributedDataParallel: the model it wraps
    if getattr(config, "_attn_implementation", "sdpa") == "eager":  # eager adds the mask to the scores
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask,
                   use_cache=False, logits_to_keep=keep).logits
    logits = logits.reshape(-1, logits.shape[-1]).float()
    # the kept positions come back in row-major order; a position may predict several answers' first tokens
    index = keep.flatten().cumsum(0) - 1
    width = keep.shape[1]
    return logits[index[batch["target_row"] * width + batch["target_at"]]], batch["target_id"], batch["target_answer"]
