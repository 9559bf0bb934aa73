"""Classification with a head: transformers' *ForSequenceClassification on an encoder (BERT, MiniLM:
the [CLS] token) or a decoder (Llama, GPT-2: the last non-padding token). The head is new and
always trains, whatever the method. Sentence pairs (text, text_pair) are encoded as the tokenizer
pairs them ([SEP] and token_type_ids on BERT)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field

from lmtune.data.examples import LabelledText, from_batch
from lmtune.data.tokenize import clip_text, text_budget
from lmtune.model.load import labelled_head
from lmtune.tasks.base import MODEL_INPUTS, Task, TaskOptions, register_task
from lmtune.tasks.label_tokens import macro_f1

ClassWeights = Optional[Union[Literal["balanced"], list[float]]]
CLASS_WEIGHTS_HELP = "a weight per label in the loss, or 'balanced' (inverse label frequency in train)"


class SeqClsOptions(TaskOptions):
    """Classification with a new head on the model."""

    name: Literal["seq_cls"] = "seq_cls"
    class_weights: ClassWeights = Field(None, description=CLASS_WEIGHTS_HELP)


def class_weights(cfg):
    """task.class_weights of the tasks that have the option (regression, a subclass, has not)."""
    return getattr(cfg.task, "class_weights", None)


def check_class_weights(cfg) -> None:
    weights = class_weights(cfg)
    if isinstance(weights, list) and len(weights) != len(cfg.data.labels or []):
        raise ValueError("task.class_weights needs one weight per entry of data.labels")


def balanced_weights(counts: torch.Tensor) -> torch.Tensor:
    """weight_c = items / (classes x items of class c), as scikit-learn has it; 0 for an absent class."""
    counts = counts.double()
    return torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp(min=1)), 0.0).float()


def encode_texts(tokenizer, batch: dict[str, list], max_length: int) -> dict[str, list]:
    """input_ids (and token_type_ids) of each row's text, or text pair, cut to max_length."""
    examples = from_batch(batch)
    budget = text_budget(tokenizer, max_length)  # the tokenizer keeps each text's start
    texts = [clip_text(ex["text"], budget, "start") for ex in examples]
    pairs = [clip_text(ex["pair"], budget, "start") for ex in examples]
    has_pairs = any(pairs)
    enc = tokenizer(texts, pairs if has_pairs else None, truncation="longest_first" if has_pairs else True,
                    max_length=max_length)
    full = tokenizer(texts, pairs if has_pairs else None)["input_ids"]
    out = {"input_ids": enc["input_ids"], "truncated": [len(f) > max_length for f in full]}
    if "token_type_ids" in enc and has_pairs:
        out["token_type_ids"] = enc["token_type_ids"]
    return out


def head_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    return model(**kwargs).logits.float()


@register_task("seq_cls")
class SeqClsTask(Task):
    Options = SeqClsOptions
    examples = (LabelledText,)
    columns = ("input_ids", "labels", "token_type_ids")  # token_type_ids: sentence pairs on BERT-like encoders
    metric_for_summary = "accuracy"
    metrics = {"accuracy": "max", "f1": "max", "loss": "min"}
    generates = False
    labels_name = "label"
    class_column = "labels"
    can_pack = False
    can_distill = True
    head_modules = ("score", "classifier")  # transformers' head on decoders / encoders

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        check_class_weights(cfg)

    def __init__(self, cfg, tokenizer, renderer):
        super().__init__(cfg, tokenizer, renderer)
        self.labels = cfg.data.labels or []
        self.weights = None  # class weights; "balanced" ones are set from the training labels
        if isinstance(class_weights(cfg), list):
            self.weights = torch.tensor(class_weights(cfg), dtype=torch.float32)
        self.last_confusion = None

    @classmethod
    def spec(cls, cfg):
        return labelled_head("AutoModelForSequenceClassification", cfg.data.labels)

    def encode(self, batch):
        out = encode_texts(self.tokenizer, batch, self.cfg.data.max_length)
        out["labels"] = list(batch["label"])
        return out

    def fit(self, train_dataset) -> None:
        """Class weights 'balanced', from the training labels."""
        if class_weights(self.cfg) != "balanced" or not hasattr(train_dataset, "column_names"):
            return
        counts = Counter(train_dataset["labels"])
        self.weights = balanced_weights(torch.tensor([counts[c] for c in range(len(self.labels))]))

    def logits_and_targets(self, model, inputs):
        return head_logits(model, inputs), inputs["labels"]

    def loss(self, model, inputs):
        logits = head_logits(model, inputs)
        weight = self.weights.to(logits.device) if self.weights is not None else None
        labels = inputs["labels"]
        return F.cross_entropy(logits, labels, weight=weight, reduction="sum"), labels.numel()

    @torch.inference_mode()
    def predict(self, model, batch) -> torch.Tensor:
        return head_logits(model, batch).argmax(-1)

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        preds, golds, loss_sum = [], [], 0.0
        for batch in self.eval_batches(model, dataset, batch_size, precision):
            logits = head_logits(model, batch)
            loss_sum += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            preds += logits.argmax(-1).tolist()
            golds += batch["labels"].tolist()
        k = len(self.labels)
        confusion = [[0] * k for _ in range(k)]
        for p, g in zip(preds, golds):
            confusion[g][p] += 1
        self.last_confusion = confusion
        return {"accuracy": sum(p == g for p, g in zip(preds, golds)) / len(golds),
                "f1": macro_f1(preds, golds, k), "loss": loss_sum / len(golds)}

    def write_artifacts(self, out) -> None:
        if self.last_confusion is not None:
            from lmtune.plot import plot_confusion

            plot_confusion(self.last_confusion, self.labels, Path(out) / "confusion_matrix.png")
