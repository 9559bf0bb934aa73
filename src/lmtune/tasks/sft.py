"""Instruction and chat fine-tuning: loss on the answer / assistant tokens only."""

from __future__ import annotations

import math

import torch

from lmtune.data.tokenize import IGNORE, tokenize_segments, truncate
from lmtune.tasks import TASKS
from lmtune.tasks.base import Task, autocast, model_device


@TASKS.register("sft")
class SftTask(Task):
    padding_side = "right"
    metric_for_summary = "loss"

    def encode(self, batch):
        conversations = [self.renderer.segments(m) for m in batch["messages"]]
        out = {"input_ids": [], "labels": [], "truncated": []}
        for ids, labels in tokenize_segments(self.tokenizer, self.renderer, conversations):
            ids, labels, cut = truncate(ids, labels, self.cfg.data.max_length)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["truncated"].append(cut)
        return out

    def loss(self, model, inputs):
        targets = int((inputs["labels"][:, 1:] != IGNORE).sum())
        # num_items_in_batch=1 makes the model's loss a sum over target tokens (shifted inside).
        out = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"], num_items_in_batch=1
        )
        return out.loss, targets

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        device = model_device(model)
        was_training = model.training
        model.eval()
        loss_sum, count = 0.0, 0
        with autocast(device, precision):
            for batch in self.batches(dataset, batch_size):
                batch = {k: v.to(device) for k, v in batch.items()}
                s, n = self.loss(model, batch)
                loss_sum += float(s)
                count += n
        model.train(was_training)
        loss = loss_sum / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50))}
