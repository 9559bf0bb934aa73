"""Sentence embeddings: a bi-encoder (one model encodes each text alone; the pooled hidden states
are its vector), trained on pairs (data format `pairs`), the job sentence-transformers does.

Losses (task.loss: one name, or several with weights, e.g. {cosine: 1, mse: 0.5}):
    cosine       (cos(a, b) - gold)^2, the gold score scaled from data.score_range to [0, 1]: the
                 seeds' cosine distance; sentence-transformers' CosineSimilarityLoss
    contrastive  InfoNCE with in-batch negatives: each anchor against every positive (and hard
                 negative) of the batch, similarities divided by task.temperature;
                 sentence-transformers' MultipleNegativesRankingLoss (its scale 20 = 1 / 0.05)
    mse          mean squared difference to a teacher's embedding of the same text (distillation)
    euclidean    Euclidean distance to the teacher's embedding
The teacher's embeddings are computed once before training (tasks/teacher_embeddings.py).
Metrics: Pearson and Spearman of the cosine similarities against the gold scores, and recall@1 of
each anchor among all the positives of the evaluation split.
"""

from __future__ import annotations

import functools
import inspect
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from lmtune.data.collate import PadCollator
from lmtune.data.examples import SentencePair, from_batch
from lmtune.data.tokenize import clip_text, text_budget
from lmtune.methods import METHODS
from lmtune.model.load import ModelSpec, resolve_model_path
from lmtune.tasks.base import Task, TaskOptions, register_task
from lmtune.tasks.regression import pearson, ranks

LOSSES = ("cosine", "contrastive", "mse", "euclidean")
TEACHER_LOSSES = ("mse", "euclidean")
TEXTS = ("input_ids", "positive_input_ids", "negative_input_ids")  # the columns of a row's texts


class EmbeddingOptions(TaskOptions):
    """A bi-encoder trained on pairs: the pooled hidden states of each text are its embedding."""

    name: Literal["embedding"] = "embedding"
    pooling: Literal["mean", "cls", "last"] = Field("mean", description="mean of the tokens' hidden states, the first "
                                                    "token's (BERT's [CLS]), or the last token's (decoders; EOS is appended)")
    normalize: bool = Field(True, description="scale embeddings to length 1 (cosine similarity = dot product)")
    loss: Union[Literal["cosine", "contrastive", "mse", "euclidean"], dict[str, float]] = Field(
        "cosine", description="cosine (scored pairs), contrastive (anchor/positive pairs), mse or euclidean (to "
                              "task.teacher's embeddings), or several with weights: {cosine: 1, mse: 0.5}")
    temperature: float = Field(0.05, gt=0, description="contrastive: similarities are divided by it")
    teacher: Optional[str] = Field(None, description="mse / euclidean: the model whose embeddings are the targets "
                                   "(alias, directory, hub id or an embedding run); computed once before training")

    @field_validator("loss")
    @classmethod
    def _known_losses(cls, value):
        if isinstance(value, dict):
            unknown = [k for k in value if k not in LOSSES]
            if unknown or not value:
                raise ValueError(f"task.loss: weights for {', '.join(LOSSES)}; got {', '.join(unknown) or 'none'}")
            if any(w < 0 for w in value.values()) or not any(w > 0 for w in value.values()):
                raise ValueError("task.loss: weights must be >= 0, one of them > 0")
        return value


def loss_weights(options) -> dict[str, float]:
    return {options.loss: 1.0} if isinstance(options.loss, str) else {k: w for k, w in options.loss.items() if w > 0}


class EmbeddingCollator:
    """All texts of a batch in one padded tensor (anchors, then positives, then hard negatives),
    so each step is one forward pass; the gold scores and teacher targets beside them."""

    def __init__(self, pad_token_id: int):
        self.pad = PadCollator(pad_token_id)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        groups = [c for c in TEXTS if all(r.get(c) for r in rows)]
        out = self.pad([{"input_ids": r[c]} for c in groups for r in rows])  # input_ids, attention_mask
        out["score"] = torch.tensor([float("nan") if r["score"] is None else r["score"] for r in rows], dtype=torch.float32)
        if "teacher" in rows[0]:
            out["teacher"] = torch.tensor([r["teacher"] for r in rows], dtype=torch.float32)  # (rows, 2, dim)
        return out


@functools.lru_cache(maxsize=16)
def without_pooler(path: str, trust_remote_code: bool) -> tuple:
    """BERT-like encoders add a pooler (a dense layer on [CLS]) that a sentence embedding does not
    use: built, it would hold weights that never get a gradient (and trip DDP's unused-parameter
    check), so the model is built without it where its class allows."""
    from transformers import AutoConfig, AutoModel

    try:
        model_class = AutoModel._model_mapping[type(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))]
    except Exception:  # not resolvable here (remote code, unknown type): the loader reports it
        return ()
    return (("add_pooling_layer", False),) if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters else ()


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    if how == "last":  # right-padded rows: the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@register_task("embedding")
class EmbeddingTask(Task):
    Options = EmbeddingOptions
    examples = (SentencePair,)
    columns = ("input_ids", "positive_input_ids", "negative_input_ids", "score")
    metrics = {"spearman": "max", "pearson": "max", "recall_at_1": "max", "loss": "min"}
    metric_for_summary = "spearman"
    model_spec = ModelSpec("AutoModel")  # the bare encoder or decoder: no head, its hidden states
    generates = False
    can_pack = False
    why_not_packed = "encodes each text alone"

    @classmethod
    def spec(cls, cfg):
        return ModelSpec("AutoModel", without_pooler(resolve_model_path(cfg.model), cfg.model.trust_remote_code))

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        method = METHODS.get(cfg.method.name)
        if method.virtual_tokens != "none":
            raise ValueError(f"task embedding pools the hidden states of a text's own tokens; {cfg.method.name} adds "
                             "virtual tokens to every row. Use lora, dora, ia3, qlora, full or freeze")
        weights = loss_weights(cfg.task)
        if any(k in TEACHER_LOSSES for k in weights) and not cfg.task.teacher:
            raise ValueError("task.loss mse / euclidean compare with a teacher's embeddings: set task.teacher")

    @classmethod
    def targets_per_row(cls, cfg):
        return 1  # one pair

    @classmethod
    def sequences_per_row(cls, cfg):
        return 2  # the two texts (a hard negative makes three)

    def __init__(self, cfg, tokenizer, renderer):
        super().__init__(cfg, tokenizer, renderer)
        self.weights = loss_weights(cfg.task)
        if set(self.weights) == {"contrastive"}:
            self.metric_for_summary = "recall_at_1"
        self.append_eos = cfg.task.pooling == "last" and tokenizer.eos_token_id is not None

    def collator(self, packing: bool = False):
        return EmbeddingCollator(self.tokenizer.pad_token_id)

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids of each text (EOS appended for last-token pooling), cut to data.max_length."""
        limit = self.cfg.data.max_length - int(self.append_eos)
        budget = text_budget(self.tokenizer, limit)
        full = self.tokenizer([clip_text(t, budget, "start") for t in texts])["input_ids"]
        eos = [self.tokenizer.eos_token_id] if self.append_eos else []
        return [ids[:limit] + eos for ids in full], [len(ids) > limit for ids in full]

    def encode(self, batch):
        examples = from_batch(batch)
        out = {"score": [ex["score"] for ex in examples]}
        cut = [False] * len(examples)
        for column, field in zip(TEXTS, ("anchor", "positive", "negative")):
            texts = [ex[field] for ex in examples]
            ids, long = self.tokenize([t or " " for t in texts])
            out[column] = [i if t else [] for i, t in zip(ids, texts)]
            cut = [a or b for a, b in zip(cut, long)]
        out["truncated"] = cut
        return out

    def embed(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(texts, dim) fp32 embeddings of a batch's texts."""
        hidden = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        vectors = pool(hidden, inputs["attention_mask"], self.cfg.task.pooling).float()
        return F.normalize(vectors, dim=-1) if self.cfg.task.normalize else vectors

    def count_items(self, batch: dict) -> int:
        return int(batch["score"].shape[0])  # pairs: what the loss is averaged over

    def loss(self, model, inputs):
        rows = inputs["score"].shape[0]
        vectors = self.embed(model, inputs)
        return self.loss_of(vectors, inputs), rows

    def loss_of(self, vectors: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the losses, summed over the batch's pairs."""
        rows = inputs["score"].shape[0]
        anchors, positives, negatives = vectors[:rows], vectors[rows: 2 * rows], vectors[2 * rows:]
        total = vectors.new_zeros(())
        for name, weight in self.weights.items():
            if name == "cosine":
                low, high = self.cfg.data.score_range or (0.0, 1.0)
                gold = (inputs["score"] - low) / (high - low)
                if torch.isnan(gold).any():
                    raise ValueError("task.loss cosine needs a gold score on every pair (sentence1, sentence2, score)")
                term = (F.cosine_similarity(anchors, positives) - gold).pow(2).sum()
            elif name == "contrastive":
                candidates = F.normalize(torch.cat([positives, negatives]), dim=-1)
                similarity = F.normalize(anchors, dim=-1) @ candidates.T / self.cfg.task.temperature
                term = F.cross_entropy(similarity, torch.arange(rows, device=vectors.device), reduction="sum")
            else:
                target = inputs["teacher"].to(vectors.device)  # (rows, 2, dim): the teacher's anchor and positive
                mine = torch.stack([anchors, positives], dim=1)
                if target.shape[-1] != mine.shape[-1]:
                    raise ValueError(f"task.teacher's embeddings have {target.shape[-1]} dimensions, this model's "
                                     f"{mine.shape[-1]}; mse / euclidean need the same size")
                diff = mine - target
                term = (diff.pow(2).mean(-1) if name == "mse" else diff.norm(dim=-1)).mean(1).sum()
            total = total + weight * term
        return total

    @torch.inference_mode()
    def evaluate(self, model, dataset, batch_size, precision):
        anchors, positives, scores, loss, rows = [], [], [], 0.0, 0
        for batch in self.eval_batches(model, dataset, batch_size, precision):
            n = batch["score"].shape[0]
            vectors = self.embed(model, batch)
            loss += float(self.loss_of(vectors, batch)) if self.can_score(batch) else 0.0
            anchors.append(vectors[:n].cpu())
            positives.append(vectors[n: 2 * n].cpu())
            scores.append(batch["score"].cpu())
            rows += n
        a, b, gold = torch.cat(anchors), torch.cat(positives), torch.cat(scores).double()
        cosine = F.cosine_similarity(a, b).double()
        out = {"loss": loss / max(rows, 1)}
        if not torch.isnan(gold).any():
            out["pearson"] = pearson(cosine, gold)
            out["spearman"] = pearson(ranks(cosine), ranks(gold))
        hits = (F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).argmax(1) == torch.arange(len(a))
        out["recall_at_1"] = hits.double().mean().item()
        return out

    def can_score(self, batch) -> bool:
        """Whether the batch has what each loss needs (an evaluation split may lack teacher targets)."""
        return all(name != "cosine" or not torch.isnan(batch["score"]).any() for name in self.weights) and (
            "teacher" in batch or not any(name in TEACHER_LOSSES for name in self.weights))
