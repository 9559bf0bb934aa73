"""Tiny random models and locally trained tokenizers: no network, a few seconds to build."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"

# ChatML, like SmolLM2's template but without a default system prompt.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Small real datasets and a few fast steps, shared by the tests that train through train().
SENTIMENT = [
    f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}",
    f"data.validation={DATA / 'rotten_tomatoes' / 'test.jsonl'}",
    "data.format=classification", "data.labels=[negative, positive]", "task.name=label_tokens",
    "data.max_samples=64", "data.max_eval_samples=32", "data.max_length=64",
]
ALPACA = [
    f"data.train={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}",
    f"data.validation={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}",
    "data.format=instruction", "task.name=sft", "data.max_samples=32", "data.max_eval_samples=16", "data.max_length=96",
]
FAST = ["train.max_steps=4", "train.batch_size=4", "train.lr=5e-3", "train.logging_steps=1", "train.precision=fp32"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep tokenised-data caches of the tests away from the user's cache."""
    os.environ["LMTUNE_CACHE"] = str(tmp_path_factory.mktemp("lmtune-cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # No hub here: a hub lookup must fail at once rather than wait for a network timeout.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def _corpus() -> list[str]:
    rows = [json.loads(l)["text"] for l in (DATA / "rotten_tomatoes" / "validation.jsonl").read_text().splitlines()[:400]]
    alpaca = json.loads((DATA / "alpaca_en_demo" / "alpaca_en_demo.json").read_text())[:200]
    rows += [r["instruction"] + " " + r["output"] for r in alpaca]
    return rows + ["positive negative ### Instruction: ### Response: user assistant system"]


def build_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    if chat:
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
            chat_template=CHATML,
        )
    # GPT-2 style: no chat template and no pad token (lmtune must set one).
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def build_wordpiece_tokenizer():
    """A BERT-style tokenizer: lower-cased WordPiece, [CLS] A [SEP] B [SEP] with token_type_ids."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=600, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def _save_bert(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(path)  # a bare encoder, as all-MiniLM-L6-v2 ships: the head is lmtune's
    tokenizer.save_pretrained(path)
    return path


def _save_model(path: Path, family: str) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = build_tokenizer(chat=family == "llama")
    vocab = len(tokenizer)
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return _save_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def llama_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="session")
def gpt2_tokenizer(tiny_gpt2):
    from lmtune.config import ModelConfig
    from lmtune.model.load import load_tokenizer

    return load_tokenizer(str(tiny_gpt2), ModelConfig(name=str(tiny_gpt2)))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path
