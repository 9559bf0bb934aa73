"""A batch's common prompt through the model once, its rows' own tokens after it.

Classification through label words and instruction SFT put the same system prompt (and chat
headers) before every row: the demo's 16 rows start with the same 16 of their ~49 tokens. Each row
computes those tokens again, with the same result, since causal attention lets no position see what
comes after it. Here the batch's longest common beginning goes through the model once, as a batch of
one row, and its keys and values are the cache the rows' own tokens attend to: the same sums for
the rows' positions, to rounding, and gradients flow back through the shared keys and values into
the prompt's single pass (summed over the rows, as the rows' separate copies would have summed them).

Only on a CPU, where it was measured (MIN_SAVED_TOKENS; on a GPU a few hundred tokens may cost less
than a second model call's launches, unmeasured here), and only where it is the same computation: a
decoder with a key/value cache, rows padded on the right (no packing, no virtual tokens, no prefix
tuning), and no noise drawn per row in the forward pass (dropout or NEFTune while training: one pass
over the prompt would share one draw between the rows; an evaluation always qualifies). Not under
gradient checkpointing (recomputing a block would update the cache again), compiled blocks or a
distributed wrapper (DDP expects one forward per backward).
"""

from __future__ import annotations

import torch

from lmtune.data.tokenize import IGNORE

# The prompt's own pass is a second model call, and a call of a few tokens costs about what 100-150
# tokens cost inside a large batch on this CPU (SmolLM2: 100 ms for 1 x 16 tokens; bench/prompt_once.py
# broke even at 112-120 row tokens saved, gained 11% at 240). Below this many saved row tokens the
# batch goes through as it is.
MIN_SAVED_TOKENS = 160


def expected(cfg, device_type: str, model_config=None) -> bool:
    """Whether a run's settings let its batches' common prompt be computed once while training (the
    data decides whether there is one): what the planner and train.compile=auto go by."""
    from lmtune.methods import METHODS
    from lmtune.tasks.base import TASKS

    t = cfg.train
    dropout = [v for k, v in (model_config.to_dict() if model_config is not None else {}).items()
               if ("dropout" in k or "pdrop" in k) and isinstance(v, float)]  # GPT-2's resid_pdrop ...
    return (device_type == "cpu" and TASKS.get(cfg.task.name).prompt_once
            and METHODS.get(cfg.method.name).virtual_tokens == "none"
            and not getattr(cfg.method, "dropout", 0.0) and not any(dropout) and not t.neftune_noise_alpha
            and not t.gradient_checkpointing and not cfg.data.packing and t.compile is not True and t.batch_size > 1)


def common_prompt_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> int:
    """How many leading tokens every row has the same, real (not padding), and predicting no target;
    every row keeps at least one token of its own."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0) & ~keep.any(0)
    shared = int(same.int().cumprod(0).sum())
    return min(shared, int(attention_mask.sum(1).min()) - 1)


def predicting_targets(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a target: those followed by a label that is not -100."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def worth_it(shared: int, rows: int) -> bool:
    return shared * (rows - 1) >= MIN_SAVED_TOKENS


def computed_once(rows: list[tuple[list[int], list[int]]]) -> int:
    """The prompt computed once for a batch of tokenised rows (input_ids, labels), as training will
    find it, or 0: for the planner, which replays the run's batches."""
    from lmtune.data.collate import PadCollator

    batch = PadCollator(0)([{"input_ids": ids, "labels": labels} for ids, labels in rows])
    shared = common_prompt_length(batch["input_ids"], batch["attention_mask"], predicting_targets(batch["labels"]))
    return shared if worth_it(shared, len(rows)) else 0


def noise_per_row(model) -> bool:
    """Whether the forward pass draws random numbers for each row (dropout, NEFTune while training),
    or runs where a second pass is unsafe (compiled blocks, gradient checkpointing)."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            return True
        if module.training and isinstance(module, torch.nn.Dropout) and module.p > 0:
            return True
    if not model.training:
        return False
    config = getattr(model, "config", None)
    embeddings = model.get_input_embeddings()
    return (bool(getattr(model, "is_gradient_checkpointing", False)) or getattr(config, "attention_dropout", 0.0) > 0
            or bool(getattr(embeddings, "neftune_noise_alpha", None)))


def prompt_once_length(model, kwargs: dict[str, torch.Tensor], keep: torch.Tensor) -> int:
    """The common prompt to compute once for this batch, or 0 for the plain forward."""
    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    prompt_learning = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    if (ids is None or mask is None or set(kwargs) - {"input_ids", "attention_mask"} or ids.shape[0] < 2
            or ids.device.type != "cpu" or prompt_learning or torch.distributed.is_initialized()):
        return 0
    shared = common_prompt_length(ids, mask, keep)
    if not worth_it(shared, ids.shape[0]) or noise_per_row(model):
        return 0
    return shared


def prompt_once_logits(model, kwargs: dict[str, torch.Tensor], keep: torch.Tensor, shared: int) -> torch.Tensor:
    """The logits at keep's positions (row-major, as a boolean logits_to_keep gives them), with the
    first `shared` tokens computed once for the whole batch."""
    ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
    rows = ids.shape[0]
    prompt = model(input_ids=ids[:1, :shared], attention_mask=mask[:1, :shared], use_cache=True,
                   logits_to_keep=keep[:1, :shared]).cache
    for layer in prompt.layers:  # the one row's keys and values, seen by every row (a view, no copy)
        layer.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
        layer.values = layer.values.expand(rows, *layer.values.shape[1:])
    return model(input_ids=ids[:, shared:], attention_mask=mask, cache=prompt, use_cache=True,
                 logits_to_keep=keep[:, shared:]).logits
