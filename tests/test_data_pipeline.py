"""Sources, splits, mixing, the newer formats, multi-turn options, packing and the preview."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmtune.config import load_config
from lmtune.data.collate import PackCollator, PadCollator
from lmtune.data.dataset import load_examples, read_splits
from lmtune.data.examples import to_row
from lmtune.data.formats import FORMATS
from lmtune.data.templates import Renderer
from lmtune.data.tokenize import IGNORE
from lmtune.errors import DataError
from lmtune.tasks import TASKS
from lmtune.tasks.base import target_logits

from conftest import write_jsonl


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def encode(tok, overrides, rows):
    cfg = load_config(None, overrides)
    convert = FORMATS.get(cfg.data.format).convert
    examples = [to_row(convert(r, f"f:{i}", cfg.data)) for i, r in enumerate(rows)]
    task = TASKS.get(cfg.task.name)(cfg, tok, Renderer(tok, cfg.data.template))
    return task.encode({k: [r[k] for r in examples] for k in examples[0]})


# ---- sources -------------------------------------------------------------------------------

def test_txt_lines_files_directories_and_globs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first doc\n\nsecond doc\n")
    (tmp_path / "docs" / "b.txt").write_text("third doc\n")
    cfg = load_config(None, ["data.format=text"]).data
    texts = lambda spec, c=cfg: [e["text"] for e in load_examples(spec, c)[0]]
    assert texts(str(tmp_path / "docs")) == ["first doc", "second doc", "third doc"]
    assert texts(str(tmp_path / "docs" / "*.txt")) == ["first doc", "second doc", "third doc"]
    per_file = load_config(None, ["data.format=text", "data.txt_unit=file"]).data
    assert texts(str(tmp_path / "docs" / "a.txt"), per_file) == ["first doc\n\nsecond doc\n"]
    with pytest.raises(DataError, match="matches no file"):
        load_examples(str(tmp_path / "nothing*.jsonl"), cfg)


def test_hub_dataset_without_a_hub_is_a_clear_error():
    cfg = load_config(None, ["data.format=instruction"]).data
    with pytest.raises(DataError, match=r"someone/some-data: not a local file, and loading it as a hub dataset failed"):
        load_examples("someone/some-data", cfg)


def _instructions(n, tag="x"):
    return [{"instruction": f"{tag} {i}", "output": f"answer {i}"} for i in range(n)]


def test_val_size_carves_a_seeded_validation_split(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", _instructions(20))
    splits = read_splits(load_config(None, [f"data.train={path}", "data.val_size=0.25"]).data, seed=1)
    train, val = splits["train"].examples, splits["validation"].examples
    assert len(train) == 15 and len(val) == 5
    assert not {json.dumps(e) for e in train} & {json.dumps(e) for e in val}
    again = read_splits(load_config(None, [f"data.train={path}", "data.val_size=5"]).data, seed=1)
    assert again["validation"].examples == val
    with pytest.raises(DataError, match="leaves no rows"):
        read_splits(load_config(None, [f"data.train={path}", "data.val_size=20"]).data, seed=1)


def test_mix_follows_the_weights_and_each_source_keeps_its_format(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _instructions(30, "alpaca"))
    b = write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": f"hi {i}"},
                                                               {"from": "gpt", "value": "hello"}]} for i in range(10)])
    cfg = load_config(None, ["data.format=instruction",
                             f"data.mix=[{{path: {a}, weight: 1}}, {{path: {b}, format: sharegpt, weight: 3}}]"]).data
    mixed = read_splits(cfg, seed=0)["train"].examples
    from_b = [e for e in mixed if e["messages"][0]["content"].startswith("hi")]
    assert len(mixed) == 40 and len(from_b) == 30  # 3/4 of 40, each of b's 10 rows three times


# ---- formats ---------------------------------------------------------------------------------

def test_sharegpt_becomes_messages(llama_tokenizer):
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    out = encode(llama_tokenizer, ["data.format=sharegpt"], [row])
    prompt = ids(llama_tokenizer, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert out["labels"][0] == [IGNORE] * len(prompt) + ids(llama_tokenizer, "Yo<|im_end|>\n")
    with pytest.raises(DataError, match=r"unknown speaker 'bot'"):
        FORMATS.get("sharegpt")({"conversations": [{"from": "bot", "value": "x"}]}, "f:1", load_config(None).data)


def test_completion_has_no_template_and_ends_with_eos(llama_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, ["data.format=completion"], [{"prompt": "2 + 2 =", "completion": " 4"}])
    prompt, answer = ids(tok, "2 + 2 ="), ids(tok, " 4<|im_end|>")
    assert out["input_ids"][0] == prompt + answer
    assert out["labels"][0] == [IGNORE] * len(prompt) + answer


def test_text_is_cut_into_blocks_with_eos_between_documents(gpt2_tokenizer):
    tok = gpt2_tokenizer
    docs = [{"text": "the film is good " * 5}, {"text": "a dull film"}]
    out = encode(tok, ["data.format=text", "data.max_length=8"], docs)
    stream = ids(tok, docs[0]["text"]) + [tok.eos_token_id] + ids(tok, docs[1]["text"]) + [tok.eos_token_id]
    blocks = [stream[i : i + 8] for i in range(0, len(stream), 8)]
    expected = [b for b in blocks if len(b) > 1]  # a last block of one token predicts nothing
    assert out["input_ids"] == expected and out["labels"] == expected


def test_train_on_last_assistant_turn_only(llama_tokenizer):
    tok = llama_tokenizer
    conversation = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                 {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]}
    out = encode(tok, ["data.format=messages", "data.train_on=last_assistant"], [conversation])
    p1 = ids(tok, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    a1 = ids(tok, "Hello<|im_end|>\n")
    p2 = ids(tok, "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    a2 = ids(tok, "Ciao<|im_end|>\n")
    assert out["labels"][0] == [IGNORE] * len(p1 + a1 + p2) + a2


def test_tool_turns_pass_through_and_are_not_trained(llama_tokenizer):
    tok = llama_tokenizer
    conversation = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "call get_weather"},
        {"role": "tool", "content": "sunny", "name": "get_weather"},
        {"role": "assistant", "content": "It is sunny."}]}
    out = encode(tok, ["data.format=messages"], [conversation])
    tool = ids(tok, "<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\n")
    targets = [l for l in out["labels"][0] if l != IGNORE]
    assert targets == ids(tok, "call get_weather<|im_end|>\n") + ids(tok, "It is sunny.<|im_end|>\n")
    start = len(out["input_ids"][0]) - len(ids(tok, "It is sunny.<|im_end|>\n")) - len(tool)
    assert out["input_ids"][0][start : start + len(tool)] == tool


def test_mask_matches_the_tokenizers_own_assistant_mask(llama_tokenizer):
    """Where a template marks assistant text with {% generation %}, transformers can build the mask
    itself: ours must agree with it token for token."""
    import copy

    tok = copy.deepcopy(llama_tokenizer)
    tok.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello friend"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "See you"}]
    theirs = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True, tokenize=True)
    ours = encode(tok, ["data.format=messages"], [{"messages": messages}])
    assert ours["input_ids"][0] == theirs["input_ids"]
    assert [int(l != IGNORE) for l in ours["labels"][0]] == theirs["assistant_masks"]


# ---- packing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_rows_give_the_same_loss_per_example_as_alone(request, family):
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(f"tiny_{family}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = []
    for n in (5, 9, 3, 7):
        input_ids = torch.randint(3, 300, (n,)).tolist()
        labels = [IGNORE] * 2 + input_ids[2:]
        rows.append({"input_ids": input_ids, "labels": labels})
    with torch.no_grad():
        logits, targets = target_logits(model, PackCollator()(rows))
        packed = F.cross_entropy(logits, targets, reduction="none")
        alone = torch.cat([F.cross_entropy(*target_logits(model, PadCollator(0)([r])), reduction="none") for r in rows])
        padded_logits, padded_targets = target_logits(model, PadCollator(0)(rows))
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(F.cross_entropy(padded_logits, padded_targets, reduction="none"), alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_attention_attends_example_by_example_with_the_same_loss(request, family, monkeypatch):
    """data.packing switches sdpa to packed_sdpa: sdpa on each example of the pack instead of a
    block-diagonal mask over the whole pack. Same loss and gradients as the masked pack."""
    from transformers import AutoModelForCausalLM

    from lmtune.model import packed_attention

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"tiny_{family}"), dtype=torch.float32,
                                                 attn_implementation="sdpa")
    rows = [{"input_ids": (ids := torch.randint(3, 300, (n,)).tolist()), "labels": [IGNORE] + ids[1:]} for n in (6, 2, 9)]
    batch = PackCollator()(rows)

    def loss_and_grads():
        model.zero_grad()
        loss = F.cross_entropy(*target_logits(model, batch))
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    masked = loss_and_grads()
    assert packed_attention.use_packed_attention(model)
    seen = []
    monkeypatch.setattr(packed_attention, "pack_starts",
                        lambda *a, f=packed_attention.pack_starts: seen.append(f(*a)) or seen[-1])
    by_example = loss_and_grads()
    assert seen and all(starts == [0, 6, 8] for starts in seen)  # every layer split the pack
    torch.testing.assert_close(by_example, masked, rtol=1e-4, atol=1e-5)
    seen.clear()
    model.eval()
    with torch.no_grad():  # not a pack: padded rows and generation fall back to sdpa with the mask
        padded = F.cross_entropy(*target_logits(model, PadCollator(0)(rows)))
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, do_sample=False)
    assert seen and all(starts is None for starts in seen)
    torch.testing.assert_close(padded, masked[0], rtol=1e-4, atol=1e-5)


def test_pruned_logits_loss_equals_the_models_own_loss(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    rows = [{"input_ids": list(range(10, 20)), "labels": [IGNORE] * 6 + list(range(16, 20))},
            {"input_ids": list(range(30, 36)), "labels": [IGNORE] * 3 + list(range(33, 36))}]
    batch = PadCollator(0)(rows)
    with torch.no_grad():
        logits, targets = target_logits(model, batch)
        full = model(**batch).loss
    torch.testing.assert_close(F.cross_entropy(logits, targets), full)


def test_bf16_base_weights_train_like_fp32_weights_under_autocast(tiny_llama):
    """lmtune holds a frozen base in bf16; the recipe it replaces keeps fp32 weights and lets
    autocast cast them to bf16 at every matrix product: the same bf16 values reach the products,
    so the loss and the LoRA gradients agree to bf16 rounding (the norms run in bf16 instead)."""
    from transformers import AutoModelForCausalLM

    from lmtune.config import LoraMethod
    from lmtune.training.prepare import apply_method

    rows = [{"input_ids": list(range(10, 30)), "labels": [IGNORE] * 12 + list(range(22, 30))},
            {"input_ids": list(range(40, 52)), "labels": [IGNORE] * 5 + list(range(45, 52))}]
    batch = PadCollator(0)(rows)
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype)
        torch.manual_seed(0)
        model = apply_method(LoraMethod(r=4, dropout=0.0), model, None)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make A's gradient non-zero too
                torch.nn.init.normal_(p, std=0.02)
        with torch.autocast("cpu", torch.bfloat16):
            logits, targets = target_logits(model, batch)
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])
        results.append((loss.detach(), grads))
    (loss16, grads16), (loss32, grads32) = results
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0)
    assert F.cosine_similarity(grads16, grads32, dim=0) > 0.99
    torch.testing.assert_close(grads16.norm(), grads32.norm(), rtol=5e-2, atol=0)


# ---- the preview -----------------------------------------------------------------------------

def test_data_command_shows_counts_and_the_mask(tmp_path, tiny_llama, capsys):
    from lmtune.cli import main

    path = write_jsonl(tmp_path / "d.jsonl", _instructions(12) + [{"instruction": "long " * 80, "output": "end"}])
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {tiny_llama}\ndata:\n  train: {path}\n  val_size: 3\n  max_length: 40\n")
    assert main(["data", str(config), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "validation" in out and "trained-on tokens" in out
    assert "train row 1" in out and "train row 2" not in out
    assert "answer" in out


def test_streaming_trains_from_a_lazily_read_file(tmp_path, tiny_llama):
    from lmtune.training.run import train

    path = write_jsonl(tmp_path / "d.jsonl", _instructions(40))
    cfg = load_config(None, [f"model.name={tiny_llama}", f"data.train={path}", "data.streaming=true",
                             "train.max_steps=3", "train.batch_size=4", "train.precision=fp32",
                             f"output.dir={tmp_path / 'run'}"])
    result = train(cfg)
    assert result.metrics["train"]["steps"] == 3 and result.metrics["train"]["tokens"] > 0
    with pytest.raises(Exception, match="needs train.max_steps"):
        load_config(None, [f"data.train={path}", "data.streaming=true"])


def test_packing_trains(tmp_path, tiny_gpt2):
    from lmtune.training.run import train

    path = write_jsonl(tmp_path / "d.jsonl", _instructions(24))
    cfg = load_config(None, [f"model.name={tiny_gpt2}", f"data.train={path}", "data.val_size=4", "data.packing=true",
                             "train.max_steps=3", "train.batch_size=4", "train.precision=fp32",
                             f"output.dir={tmp_path / 'run'}"])
    result = train(cfg)
    assert result.metrics["train"]["steps"] == 3 and result.metrics["final"]["loss"] > 0
    assert result.model.config._attn_implementation == "lmtune_chunked"  # packs by example, the rest chunked


def test_data_command_shows_the_label_of_a_head_task(tmp_path, tiny_llama, capsys):
    """seq_cls rows carry one label each, not a label per token: the preview names it."""
    from lmtune.cli import main

    rows = [{"text": f"review {i}", "label": ["bad", "good"][i % 2]} for i in range(6)]
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {tiny_llama}\ndata:\n  train: {write_jsonl(tmp_path / 'd.jsonl', rows)}\n"
                      "  format: classification\n  labels: [bad, good]\ntask:\n  name: seq_cls\n")
    assert main(["data", str(config), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "-> bad" in out and "-> good" in out
