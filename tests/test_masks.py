"""Exact token ids and labels for each format, template and truncation case."""

import pytest

from lmtune.config import load_config
from lmtune.data.examples import to_row
from lmtune.data.formats import FORMATS
from lmtune.data.templates import Renderer
from lmtune.data.tokenize import IGNORE
from lmtune.tasks import TASKS


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def encode(tok, overrides, rows, template="auto"):
    cfg = load_config(None, overrides + [f"data.template={template}"])
    convert = FORMATS.get(cfg.data.format).convert
    examples = [convert(r, f"f:{i}", cfg.data) for i, r in enumerate(rows)]
    task = TASKS.get(cfg.task.name)(cfg, tok, Renderer(tok, cfg.data.template))
    rows = [to_row(e) for e in examples]
    return task.encode({k: [r[k] for r in rows] for k in rows[0]})


def test_label_tokens_chat_template(llama_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, ["task.name=label_tokens", "data.format=classification", "data.labels=[negative, positive]",
                       "data.prompt=Review: {text}"], [{"text": "a fine film", "label": 1}])
    prompt = ids(tok, "<|im_start|>user\nReview: a fine film<|im_end|>\n<|im_start|>assistant\n")
    word = ids(tok, "positive")[0]
    assert out["input_ids"][0] == prompt + [word]
    assert out["labels"][0] == [IGNORE] * len(prompt) + [word]
    assert out["label"] == [1] and out["truncated"] == [False]


def test_label_tokens_string_labels_and_custom_words(llama_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, ["task.name=label_tokens", "data.format=classification", "data.labels=[neg, pos]",
                       "task.label_words=[negative, positive]"], [{"text": "dull", "label": "neg"}])
    assert out["labels"][0][-1] == ids(tok, "negative")[0] and out["label"] == [0]


def test_instruction_chat_template_masks_the_prompt(llama_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, ["data.format=instruction"], [{"instruction": "Add", "input": "1 and 2", "output": "3"}])
    prompt = ids(tok, "<|im_start|>user\nAdd\n\n1 and 2<|im_end|>\n<|im_start|>assistant\n")
    answer = ids(tok, "3<|im_end|>\n")
    assert out["input_ids"][0] == prompt + answer
    assert out["labels"][0] == [IGNORE] * len(prompt) + answer


def test_dolly_columns_and_system_prompt(llama_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, ["data.format=instruction", "data.columns={input: context, output: response}",
                       "data.system_prompt=Be brief."],
                 [{"instruction": "Who?", "context": "", "response": "Me."}])
    # Segments are tokenised one by one: [system + user + generation prompt], then [answer].
    prompt = ids(tok, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n")
    answer = ids(tok, "Me.<|im_end|>\n")
    assert out["input_ids"][0] == prompt + answer
    assert out["labels"][0] == [IGNORE] * len(prompt) + answer


def test_instruction_plain_template_with_bos_and_eos(gpt2_tokenizer):
    tok = gpt2_tokenizer
    out = encode(tok, ["data.format=instruction"], [{"instruction": "Say hi", "output": "hi"}])
    prompt = ids(tok, "### Instruction:\nSay hi\n\n### Response:\n")
    answer = ids(tok, "hi<|endoftext|>")
    assert out["input_ids"][0] == prompt + answer
    assert out["labels"][0] == [IGNORE] * len(prompt) + answer


def test_multi_turn_trains_every_assistant_turn(llama_tokenizer):
    tok = llama_tokenizer
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
    out = encode(tok, ["data.format=messages"], [{"messages": conversation}])
    p1 = ids(tok, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    a1 = ids(tok, "Hello<|im_end|>\n")
    p2 = ids(tok, "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    a2 = ids(tok, "Ciao<|im_end|>\n")
    assert out["input_ids"][0] == p1 + a1 + p2 + a2
    assert out["labels"][0] == [IGNORE] * len(p1) + a1 + [IGNORE] * len(p2) + a2


def test_truncation_cuts_the_prompt_from_the_left(llama_tokenizer):
    tok = llama_tokenizer
    row = {"instruction": "word " * 40, "output": "short answer"}
    full = encode(tok, ["data.format=instruction"], [row])
    answer = ids(tok, "short answer<|im_end|>\n")
    out = encode(tok, ["data.format=instruction", f"data.max_length={len(answer) + 5}"], [row])
    assert out["truncated"] == [True] and full["truncated"] == [False]
    assert out["input_ids"][0] == full["input_ids"][0][-(len(answer) + 5):]
    assert out["labels"][0] == [IGNORE] * 5 + answer


def test_truncation_of_a_target_longer_than_max_length_keeps_its_start(llama_tokenizer):
    tok = llama_tokenizer
    row = {"instruction": "Q", "output": "long " * 50}
    full = encode(tok, ["data.format=instruction"], [row])
    out = encode(tok, ["data.format=instruction", "data.max_length=10"], [row])
    start = full["labels"][0].index(next(l for l in full["labels"][0] if l != IGNORE))
    # one prompt token is kept so that the first answer token is still predicted
    assert out["input_ids"][0] == full["input_ids"][0][start - 1 : start + 9]
    assert out["labels"][0][0] == IGNORE and all(l != IGNORE for l in out["labels"][0][1:])


def test_label_tokens_truncation_keeps_the_label(llama_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, ["task.name=label_tokens", "data.format=classification", "data.labels=[negative, positive]",
                       "data.max_length=8"], [{"text": "long review " * 20, "label": 0}])
    assert len(out["input_ids"][0]) == 8 and out["truncated"] == [True]
    assert out["labels"][0] == [IGNORE] * 7 + [ids(tok, "negative")[0]]


def test_label_words_with_the_same_first_token_are_rejected(llama_tokenizer):
    from lmtune.errors import ConfigError

    with pytest.raises(ConfigError, match="start with the same token"):
        encode(llama_tokenizer, ["task.name=label_tokens", "data.format=classification", "data.labels=[pos, pos2]",
                                 "task.label_words=[positive, positive!]"], [{"text": "x", "label": 0}])


def seed_article_ids(tok, text: str, label_word: str, max_len: int) -> tuple[list[int], list[int]]:
    """The seed article's process_fn (../shared/seeds/003), without its padding to max_len: the
    review's tokens, EOS, the label word's first token; the last max_len tokens kept."""
    label = tok(label_word, add_special_tokens=False)["input_ids"][0]
    input_ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, label]
    if len(input_ids) >= max_len:
        return input_ids[-max_len:], [IGNORE] * (max_len - 1) + [label]
    return input_ids, [IGNORE] * (len(input_ids) - 1) + [label]


@pytest.mark.parametrize("text", ["a fine film", " ".join(["and the plot goes nowhere"] * 12)])
def test_eos_separated_template_reproduces_the_seed_articles_ids(llama_tokenizer, text):
    tok = llama_tokenizer
    out = encode(tok, ["task.name=label_tokens", "data.format=classification", "data.labels=[negative, positive]",
                       "task.label_words=[neg, pos]", "data.max_length=32"], [{"text": text, "label": 1}],
                 template="eos_separated")
    assert (out["input_ids"][0], out["labels"][0]) == seed_article_ids(tok, text, "pos", 32)
    assert out["truncated"] == [len(ids(tok, text)) + 2 > 32]


def test_eos_separated_sft_ends_prompt_and_answer_with_eos(llama_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, ["data.format=instruction"], [{"instruction": "Add 1 and 2", "output": "3"}], template="eos_separated")
    assert out["input_ids"][0] == ids(tok, "Add 1 and 2") + [tok.eos_token_id] + ids(tok, "3") + [tok.eos_token_id]
    assert Renderer(tok, "eos_separated").prompt([{"role": "user", "content": "Add 1 and 2"}]) == "Add 1 and 2" + tok.eos_token
