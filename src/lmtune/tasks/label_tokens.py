"""Classification by a causal LM through label words.

The prompt is followed by the label word; the loss is on that one token only, and the prediction
is the argmax over the label words' logits, so the model can never answer outside the label set.
Only the position before the label goes through the LM head, in training too.

The loss is the cross-entropy over the whole vocabulary by default, so the trained model answers
with the label word in `lmtune generate` too; `task.loss: label_words` takes it over the label
words' logits only (PET's verbalizer loss): no gradient is spent pushing down the rest of the
vocabulary, and generation may then answer with another word.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.data.examples import LabelledText, from_batch
from lmtune.data.tokenize import IGNORE, clip_chat, text_budget, tokenize_segments, truncate
from lmtune.errors import ConfigError
from lmtune.tasks.base import Task, TaskOptions, register_task, target_logits, target_loss


class LabelTokensOptions(TaskOptions):
    """The answer is a label word after the prompt."""

    name: Literal["label_tokens"] = "label_tokens"
    label_words: Optional[list[str]] = Field(None, description="the word for each label (default: the labels)")
    loss: Literal["vocabulary", "label_words"] = Field(
        "vocabulary", description="cross-entropy over the whole vocabulary, or over the label words only "
        "(generate may then answer with another word)")


@register_task("label_tokens")
class LabelTokensTask(Task):
    Options = LabelTokensOptions
    examples = (LabelledText,)
    columns = ("input_ids", "labels", "label")
    metric_for_summary = "accuracy"
    # label_word_answers: the share of rows whose most likely next token over the whole vocabulary is a
    # label word, i.e. where greedy generation would start its answer with one (task.loss: label_words)
    metrics = {"accuracy": "max", "f1": "max", "loss": "min", "label_word_answers": "max"}
    labels_name = "label"
    class_column = "label"
    can_distill = True
    prompt_once = True
    # Generation answers with the one token the model was trained on, the label word's first: without
    # this, `lmtune generate` said "positive positive ..." up to --max-new-tokens (no row taught it to
    # stop), and a word of several tokens came out as its first piece repeated.
    answer_tokens = 1

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.task.label_words is not None and len(cfg.task.label_words) != len(cfg.data.labels):
            raise ValueError("task.label_words needs one word per entry of data.labels")

    @classmethod
    def targets_per_row(cls, cfg):
        return 1  # the label word

    def __init__(self, cfg, tokenizer, renderer):
        super().__init__(cfg, tokenizer, renderer)
        self.label_words = cfg.task.label_words or cfg.data.labels
        self.label_token_ids = [self._first_token(w) for w in self.label_words]
        if len(set(self.label_token_ids)) != len(self.label_token_ids):
            pieces = [tokenizer.convert_ids_to_tokens(i) for i in self.label_token_ids]
            raise ConfigError(
                f"task.label_words {self.label_words} start with the same token ({pieces}); "
                "choose words whose first tokens differ"
            )

    def _first_token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"task.label_words: {word!r} tokenises to nothing")
        return ids[0]

    def encode(self, batch):
        examples = from_batch(batch)
        budget = text_budget(self.tokenizer, self.cfg.data.max_length)
        prompts = [self.renderer.segments(clip_chat(ex, budget)["messages"], add_generation_prompt=True) for ex in examples]
        out = {"input_ids": [], "labels": [], "label": [], "truncated": []}
        labels_of_rows = [ex["label"] for ex in examples]
        for (ids, labels), label in zip(tokenize_segments(self.tokenizer, self.renderer, prompts), labels_of_rows):
            target = self.label_token_ids[label]
            ids, labels, cut = truncate(ids + [target], [IGNORE] * len(ids) + [target], self.cfg.data.max_length)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["label"].append(label)
            out["truncated"].append(cut)
        return out

    def logits_and_targets(self, model, inputs):
        return target_logits(model, inputs)

    def loss(self, model, inputs):
        if self.cfg.task.loss == "vocabulary":
            return target_loss(model, inputs)
        logits, targets = target_logits(model, inputs, upcast=False)
        return self.label_word_loss(logits, targets), targets.numel()

    def label_word_loss(self, logits, targets):
        """Cross-entropy of each target among the label words' logits alone, summed over the rows."""
        words = torch.tensor(self.label_token_ids, device=targets.device)
        return F.cross_entropy(self.classes(logits).float(), (targets[:, None] == words).int().argmax(-1),
                               reduction="sum")

    def classes(self, logits):
        # The prediction is the best label word. For distillation: over the whole vocabulary, matching the teacher's softened tail (49k entries on SmolLM2)
        # drowned the label words: a 6-block student learnt less with the teacher (0.59) than without (0.72).
        return logits[:, self.label_token_ids]

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        preds, golds, loss_sum, answers = [], [], 0.0, 0
        words = torch.tensor(self.label_token_ids)
        for batch in self.eval_batches(model, dataset, batch_size, precision):
            logits, targets = target_logits(model, batch)
            if self.cfg.task.loss == "vocabulary":
                loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            else:  # the loss it trains on, so that its best checkpoint is chosen by it
                loss_sum += self.label_word_loss(logits, targets).item()
            preds += self.classes(logits).argmax(-1).tolist()
            answers += torch.isin(logits.argmax(-1), words.to(logits.device)).sum().item()
            golds += batch["label"].tolist()
        return {
            "accuracy": sum(p == g for p, g in zip(preds, golds)) / len(golds),
            "f1": macro_f1(preds, golds, len(self.label_words)),
            "loss": loss_sum / len(golds),
            "label_word_answers": answers / len(golds),
        }


def macro_f1(preds: list[int], golds: list[int], classes: int) -> float:
    scores = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(preds, golds))
        fp = sum(p == c and g != c for p, g in zip(preds, golds))
        fn = sum(p != c and g == c for p, g in zip(preds, golds))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / classes
