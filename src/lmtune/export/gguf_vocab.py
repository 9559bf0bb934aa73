"""The tokenizer inside a GGUF file: tokens, types, merges, special ids, the pre-tokenizer, the chat
template and the tokens that end a turn, so that llama.cpp splits text into the ids the model was
trained on and stops where the model learnt to stop.

Supported: byte-level BPE tokenizers (GPT-2's kind, as SmolLM, Llama 3 and Qwen2 use), with a
pre-tokenizer llama.cpp knows by name. The name is read from the tokenizer's own pre-tokenizer:
GPT-2's regex alone is `gpt-2`; single digits split off first, then GPT-2's regex, is `smollm`; a
split by Qwen2's or Llama 3's regex before the bytes is `qwen2` or `llama-bpe`. Others are refused
with that list rather than written under a guessed name (a wrong name tokenises differently
without any error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lmtune.errors import ConfigError

# llama.cpp's token types
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
SUPPORTED = ("byte-level BPE with GPT-2's pre-tokenizer (gpt-2), single digits split first (smollm), "
             "or Qwen2's (qwen2) or Llama 3's (llama-bpe) split")
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLITS = {_WORDS + r"\p{N}" + _REST: "qwen2", _WORDS + r"\p{N}{1,3}" + _REST: "llama-bpe"}


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    stop_ids: list[int] = field(default_factory=list)  # every token that ends a turn, EOS included

    def stop_texts(self) -> list[str]:
        return [self.tokens[i] for i in self.stop_ids]


def pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre_tokenizer, or a ConfigError naming what it is."""
    def byte_level(p):
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if spec and byte_level(spec):
        return "gpt-2"
    if spec and spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
                and byte_level(parts[1])):
            return "smollm"
        if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[0].get("behavior") == "Isolated"
                and parts[0].get("pattern", {}).get("Regex") in SPLITS and parts[1].get("type") == "ByteLevel"
                and not parts[1].get("use_regex", True)):
            return SPLITS[parts[0]["pattern"]["Regex"]]
    kind = json.dumps(spec)[:200] if spec else "none"
    raise ConfigError(f"GGUF export: this tokenizer's pre-tokenizer ({kind}) has no llama.cpp name lmtune knows; "
                      f"supported: {SUPPORTED}")


def vocab_of(tokenizer, vocab_size: int, renderer=None) -> Vocab:
    """Everything GGUF holds about the tokenizer of a model whose embedding has vocab_size rows."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "backend_tokenizer", None) else None
    if spec is None or spec["model"]["type"] != "BPE" or spec["model"].get("byte_fallback"):
        kind = spec["model"]["type"] if spec else type(tokenizer).__name__
        raise ConfigError(f"GGUF export: {kind} tokenizers are not supported yet; supported: {SUPPORTED}")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ConfigError(f"GGUF export: the tokenizer has ids up to {max(by_id)} but the model's embedding only {vocab_size} rows")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # an embedding padded past the tokenizer (multiple of 64 ...)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(added[i]["content"] if i in added else by_id[i])
        types.append((CONTROL if added[i].get("special") else USER_DEFINED) if i in added else NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(probe) > len(bare) and probe[0] == bos
    add_eos = eos is not None and len(probe) > len(bare) and probe[-1] == eos
    template = getattr(tokenizer, "chat_template", None)
    vocab = Vocab(tokens, types, merges, pre, bos, eos, tokenizer.unk_token_id, tokenizer.pad_token_id, add_bos, add_eos,
                  template if isinstance(template, str) else None)
    vocab.stop_ids = stop_ids(tokenizer, renderer, eos)
    return vocab


def stop_ids(tokenizer, renderer, eos: int | None) -> list[int]:
    """EOS and the special tokens the chat template closes an assistant turn with (what lmtune
    trains as the end of an answer), found by rendering a turn, not by a list of known names."""
    ids = [eos] if eos is not None else []
    if renderer is None or renderer.mode != "chat":
        return ids
    answer = "lmtune-answer"
    segments = renderer.segments([{"role": "user", "content": "hello"}, {"role": "assistant", "content": answer}])
    target = next(text for text, is_target in segments if is_target)
    ending = target[target.index(answer) + len(answer):]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token in tokenizer(ending, add_special_tokens=False)["input_ids"]:
        if token in special and token not in ids:
            ids.append(token)
    return ids
