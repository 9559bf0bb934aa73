"""Token classification (NER): word-level tags aligned to sub-word tokens (each word's first token
carries its tag, the others -100), transformers' *ForTokenClassification head, and an optional CRF
over the tags (task.crf). Metrics: entity-level precision / recall / F1 (seqeval) and token accuracy."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.data.examples import TaggedWords, from_batch
from lmtune.data.tokenize import IGNORE
from lmtune.model.load import labelled_head
from lmtune.tasks.base import MODEL_INPUTS, Task, TaskOptions, register_task
from lmtune.tasks.seq_cls import CLASS_WEIGHTS_HELP, ClassWeights, balanced_weights, check_class_weights


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] ... [SEP] on BERT; a BOS on some)."""
    with_specials = tokenizer("x", add_special_tokens=True)["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(bare) + 1):
        if with_specials[start : start + len(bare)] == bare:
            return with_specials[:start], with_specials[start + len(bare) :]
    return [], []


def align_words(tokenizer, words: list[str], tags: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated): each word tokenised after a space (as inside a sentence) so
    byte-level BPE and WordPiece both see word boundaries; the first sub-token of a word gets its
    tag, the rest -100, and so do the special tokens. A word with no token of its own becomes the
    unknown token, so that every word keeps exactly one labelled position."""
    prefix, suffix = special_tokens_around(tokenizer)
    truncated = len(words) > max_length
    words = words[:max_length]  # every word is at least one token: the rest cannot fit, so is not tokenised
    pieces = tokenizer([w if i == 0 else " " + w for i, w in enumerate(words)], add_special_tokens=False)["input_ids"]
    ids, labels = list(prefix), [IGNORE] * len(prefix)
    room = max_length - len(prefix) - len(suffix)
    for piece, tag in zip(pieces, tags):
        piece = piece or [tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id]
        if len(ids) - len(prefix) + len(piece) > room:
            truncated = True
            break
        ids += piece
        labels += [tag] + [IGNORE] * (len(piece) - 1)
    return ids + suffix, labels + [IGNORE] * len(suffix), truncated


def labelled(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the positions that carry a word's tag, packed to the left: (emissions B x W x C,
    tags B x W, mask B x W). The CRF runs over words, not sub-word tokens."""
    keep = labels != IGNORE
    counts = keep.sum(1)
    width = max(int(counts.max()), 1)
    slot = torch.cumsum(keep, 1) - 1
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    emissions = logits.new_zeros(labels.shape[0], width, logits.shape[-1])
    tags = labels.new_zeros(labels.shape[0], width)
    emissions[rows[keep], slot[keep]] = logits[keep]
    tags[rows[keep], slot[keep]] = labels[keep]
    mask = torch.arange(width, device=labels.device)[None, :] < counts[:, None]
    return emissions, tags, mask


class TokenClsOptions(TaskOptions):
    """A tag per word (NER), with an optional CRF over the tags."""

    name: Literal["token_cls"] = "token_cls"
    class_weights: ClassWeights = Field(None, description=CLASS_WEIGHTS_HELP)
    crf: bool = Field(False, description="a CRF layer over the tags (pytorch-crf), decoded with Viterbi")


@register_task("token_cls")
class TokenClsTask(Task):
    Options = TokenClsOptions
    examples = (TaggedWords,)
    metric_for_summary = "f1"
    metrics = {"f1": "max", "precision": "max", "recall": "max", "accuracy": "max", "loss": "min"}
    generates = False
    labels_name = "tag"
    can_pack = False
    head_modules = ("score", "classifier")

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        check_class_weights(cfg)

    @property
    def extra_layers(self):
        return ("crf",) if self.cfg.task.crf else ()

    def __init__(self, cfg, tokenizer, renderer):
        super().__init__(cfg, tokenizer, renderer)
        self.tags = cfg.data.labels or []
        self.weights = torch.tensor(cfg.task.class_weights) if isinstance(cfg.task.class_weights, list) else None

    @classmethod
    def spec(cls, cfg):
        return labelled_head("AutoModelForTokenClassification", cfg.data.labels)

    def prepare(self, model):
        if self.cfg.task.crf:
            from lmtune.tasks.crf import BioCRF

            model.crf = BioCRF(self.tags).to(next(model.parameters()).device)
        return model

    def encode(self, batch):
        out = {"input_ids": [], "labels": [], "truncated": []}
        for ex in from_batch(batch):
            ids, labels, cut = align_words(self.tokenizer, ex["words"], ex["tags"], self.cfg.data.max_length)
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["truncated"].append(cut)
        return out

    def fit(self, train_dataset) -> None:
        if self.cfg.task.class_weights != "balanced" or not hasattr(train_dataset, "column_names"):
            return
        counts = torch.zeros(len(self.tags))
        for labels in train_dataset["labels"]:
            for tag in labels:
                if tag != IGNORE:
                    counts[tag] += 1
        self.weights = balanced_weights(counts)

    def emissions(self, model, inputs) -> torch.Tensor:
        kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
        logits = model(**kwargs).logits.float()
        return logits[:, -inputs["labels"].shape[1] :]  # prompt methods put virtual tokens first

    def crf(self, model):
        return getattr(model, "crf", None) if self.cfg.task.crf else None

    def loss(self, model, inputs):
        logits, labels = self.emissions(model, inputs), inputs["labels"]
        count = int((labels != IGNORE).sum())
        crf = self.crf(model)
        if crf is not None:
            emissions, tags, mask = labelled(logits, labels)
            return -crf(emissions, tags, mask, reduction="sum"), count
        weight = self.weights.to(logits.device) if self.weights is not None else None
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), weight=weight,
                               ignore_index=IGNORE, reduction="sum"), count

    @torch.inference_mode()
    def predict(self, model, inputs) -> tuple[list[list[int]], list[list[int]]]:
        """(predicted tags, gold tags) per row, one per word."""
        logits, labels = self.emissions(model, inputs), inputs["labels"]
        emissions, tags, mask = labelled(logits, labels)
        crf = self.crf(model)
        predicted = crf.decode(emissions, mask) if crf is not None else [
            row[m].tolist() for row, m in zip(emissions.argmax(-1), mask)]
        gold = [row[m].tolist() for row, m in zip(tags, mask)]
        return predicted, gold

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        from seqeval.metrics import f1_score, precision_score, recall_score

        predicted, gold, loss_sum, count = [], [], 0.0, 0
        for batch in self.eval_batches(model, dataset, batch_size, precision):
            s, n = self.loss(model, batch)
            loss_sum, count = loss_sum + float(s), count + n
            p, g = self.predict(model, batch)
            predicted += p
            gold += g
        names = lambda rows: [[self.tags[t] for t in row] for row in rows]  # noqa: E731
        pred_names, gold_names = names(predicted), names(gold)
        correct = sum(p == g for pr, gr in zip(predicted, gold) for p, g in zip(pr, gr))
        return {"f1": f1_score(gold_names, pred_names, zero_division=0),
                "precision": precision_score(gold_names, pred_names, zero_division=0),
                "recall": recall_score(gold_names, pred_names, zero_division=0),
                "accuracy": correct / max(sum(len(g) for g in gold), 1), "loss": loss_sum / max(count, 1)}
