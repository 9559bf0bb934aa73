"""Instruction and chat fine-tuning (loss on the answer / assistant tokens only), completion pairs,
and continued pre-training on raw text (loss on every token)."""

from __future__ import annotations

import math
from typing import Literal

import torch

from lmtune.data.examples import Chat, Document, family_of, from_batch
from lmtune.data.templates import Segment
from lmtune.data.tokenize import bos_prefix, clip_chat, text_budget, tokenize_segments, truncate
from lmtune.tasks.base import Task, TaskOptions, register_task, target_logits, target_loss


class SftOptions(TaskOptions):
    """Instruction / chat fine-tuning and continued pre-training: no options of its own (the loss
    mask comes from data.train_on and the template)."""

    name: Literal["sft"] = "sft"


@register_task("sft")
class SftTask(Task):
    Options = SftOptions
    examples = (Chat, Document)
    metric_for_summary = "loss"
    metrics = {"loss": "min", "perplexity": "min"}
    can_distill = True
    prompt_once = True

    def encode(self, batch):
        examples = from_batch(batch)
        if examples and family_of(examples[0]) is Document:
            return self.encode_documents([ex["text"] for ex in examples])
        budget = text_budget(self.tokenizer, self.cfg.data.max_length)
        conversations = [self._targets(self.renderer.render(clip_chat(ex, budget))) for ex in examples]
        out = {"input_ids": [], "labels": [], "truncated": []}
        for ids, labels in tokenize_segments(self.tokenizer, self.renderer, conversations):
            ids, labels, cut = truncate(ids, labels, self.cfg.data.max_length)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["truncated"].append(cut)
        return out

    def _targets(self, segments: list[Segment]) -> list[Segment]:
        """data.train_on: last_assistant keeps the loss on the final assistant turn only."""
        if self.cfg.data.train_on == "all_assistant":
            return segments
        last = max((i for i, (_, target) in enumerate(segments) if target), default=-1)
        return [(text, target and i == last) for i, (text, target) in enumerate(segments)]

    def encode_documents(self, documents: list[str]) -> dict[str, list]:
        """Continued pre-training: documents joined with EOS and cut into blocks of max_length,
        the loss on every token. A block may span two documents, as in the usual recipe; the
        remainder of a map batch becomes one shorter block, so no text is dropped."""
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        prefix = bos_prefix(self.tokenizer, self.renderer)
        stream: list[int] = []
        for ids in self.tokenizer(documents, add_special_tokens=False)["input_ids"]:
            stream += prefix + ids + eos
        size = self.cfg.data.max_length
        blocks = [stream[i : i + size] for i in range(0, len(stream), size)]
        blocks = [b for b in blocks if len(b) > 1]  # a one-token block predicts nothing
        return {"input_ids": blocks, "labels": [list(b) for b in blocks], "truncated": [False] * len(blocks)}

    def logits_and_targets(self, model, inputs):
        return target_logits(model, inputs)

    def loss(self, model, inputs):
        return target_loss(model, inputs)

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        loss_sum, count = 0.0, 0
        for batch in self.eval_batches(model, dataset, batch_size, precision):
            s, n = self.loss(model, batch)
            loss_sum += float(s)
            count += n
        loss = loss_sum / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50))}
