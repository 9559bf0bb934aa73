"""Bad input and damaged files as one clear line, never a traceback: damaged weights and
checkpoints, a config that is not text, a byte-order mark, an unwritable location, empty turns,
and a row far longer than max_length."""

import json
import os
import shutil

import pytest

from lmtune.atomic import write_text_atomic
from lmtune.cli import main
from lmtune.config import load_config
from lmtune.data.dataset import load_examples
from lmtune.errors import ConfigError, DataError
from lmtune.infer.load import load_engines
from lmtune.training.run import train

from conftest import ALPACA, FAST, SENTIMENT, write_jsonl


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("faults") / "run"
    train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *ALPACA, *FAST, "train.zero_shot_eval=false",
                             "train.save_steps=2"]), reporters=[])
    return out


def damaged_copy(run, tmp_path, how: str):
    copy = tmp_path / f"run-{how}"
    shutil.copytree(run, copy)
    weights = copy / "adapter" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))
    return copy, weights


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_weights_are_one_line_naming_the_file(sft_run, tmp_path, capsys, how):
    run, weights = damaged_copy(sft_run, tmp_path, how)
    for command in (["generate", str(run), "hi"], ["eval", str(run)], ["merge", str(run), str(tmp_path / "m")],
                    ["export", str(run), str(tmp_path / "e")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{weights}: damaged, not a valid safetensors file" in err and "Traceback" not in err, (command, err)
        assert "resume it from a checkpoint" in err
    with pytest.raises(ConfigError, match="not a valid safetensors file"):
        load_engines([str(run)])  # lmtune serve
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


def test_a_damaged_checkpoint_is_not_resumed_and_the_older_one_is_named(sft_run, tmp_path, tiny_llama):
    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    newest = run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={run}", *ALPACA, *FAST, "train.max_steps=6",
                             "train.zero_shot_eval=false", "train.save_steps=2"])
    with pytest.raises(ConfigError, match=r"checkpoint-4/adapter_model.safetensors: damaged.*--resume .*checkpoint-2"):
        train(cfg, resume="latest", reporters=[])


def test_a_config_that_is_not_text_is_one_line(tmp_path, capsys):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["train", str(binary)]) == 2
    err = capsys.readouterr().err
    assert "model.yaml: not a text file" in err and "Traceback" not in err


def test_a_byte_order_mark_is_read_as_spreadsheets_write_it(tmp_path):
    rows = [{"text": "a fine film", "label": "positive"}, {"text": "dull", "label": "negative"}]
    cfg = load_config(None, ["data.format=classification", "data.labels=[negative, positive]", "task.name=label_tokens"]).data
    plain = load_examples(str(write_jsonl(tmp_path / "plain.jsonl", rows)), cfg)[0]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.jsonl").read_bytes())
    as_json = tmp_path / "bom.json"
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbftext,label\na fine film,positive\ndull,negative\n")
    for path in (jsonl, as_json, csv):
        assert load_examples(str(path), cfg)[0] == plain, path
    config = tmp_path / "bom.yaml"
    config.write_bytes(b"\xef\xbb\xbftrain:\n  lr: 0.001\n")
    assert load_config(config).train.lr == 0.001


def test_an_unwritable_location_is_one_line(tmp_path, tiny_llama, capsys, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {tiny_llama}\n")
    assert main(["train", str(config), "--output-dir", str(a_file / "run"), *SENTIMENT, *FAST]) == 2
    assert "cannot write in" in capsys.readouterr().err
    # A full disk while writing: the old file stays whole, and the error names the file.
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ConfigError, match=r"metrics.json: cannot write \(No space left on device\)"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_empty_user_turn_stops_the_run_as_the_docs_say(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "  "},
                                                               {"role": "assistant", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"chat.jsonl:1: messages\[0\]: content must be a non-empty string"):
        load_examples(str(path), load_config(None, ["data.format=messages"]).data)


@pytest.mark.parametrize("task", ["label_tokens", "sft", "seq_cls", "token_cls"])
def test_a_huge_row_is_cut_before_tokenising_with_the_same_tokens(tmp_path, request, task, monkeypatch):
    """A row far longer than max_length costs what max_length costs: its text is cut by characters
    (with a margin) before the tokenizer sees it, and the tokens kept are the ones a full tokenisation
    and truncation keeps."""
    import lmtune.data.tokenize as tokenize
    from lmtune.data.examples import to_row
    from lmtune.data.formats import FORMATS
    from lmtune.loading import make_task

    words = [f"w{i % 97}" for i in range(60_000)]
    rows = {"label_tokens": {"text": " ".join(words), "label": "positive"},
            "seq_cls": {"text": " ".join(words), "label": "positive"},
            "sft": {"instruction": " ".join(words), "output": " ".join(words[:50])},
            "token_cls": {"tokens": words, "tags": ["O"] * len(words)}}
    formats = {"label_tokens": "classification", "seq_cls": "classification", "sft": "instruction", "token_cls": "tokens"}
    labels = "[O, B-x, I-x]" if task == "token_cls" else "[negative, positive]"
    cfg = load_config(None, [f"task.name={task}", f"data.format={formats[task]}", f"data.labels={labels}", "data.max_length=48"])
    tokenizer_dir = request.getfixturevalue("tiny_llama")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    task_obj = make_task(cfg, tokenizer)
    example = FORMATS.get(cfg.data.format)(rows[task], "r:1", cfg.data)
    batch = {k: [v] for k, v in to_row(example).items()}
    cut = task_obj.encode(batch)
    assert tokenize.text_budget(tokenizer, 48) < len(rows["seq_cls"]["text"]) // 10  # the text was cut
    for module in ("label_tokens", "seq_cls", "sft"):  # no cut: the whole text is tokenised, then truncated
        monkeypatch.setattr(f"lmtune.tasks.{module}.text_budget", lambda *a: 10**9)
    whole = task_obj.encode(batch)
    assert cut["input_ids"] == whole["input_ids"] and cut["truncated"] == whole["truncated"] == [True]
    assert len(cut["input_ids"][0]) <= 48


def test_weights_of_another_shape_or_names_are_refused_by_name(sft_run, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(sft_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({name.replace("lora_A", "lora_Z"): t for name, t in tensors.items()}, weights)  # valid file, wrong names
    assert main(["eval", str(run)]) == 2
    assert "lack" in capsys.readouterr().err
    save_file({name: torch.zeros(t.shape[0] + 1, *t.shape[1:]) for name, t in tensors.items()}, weights)  # wrong shapes
    assert main(["generate", str(run), "hi"]) == 2
    err = capsys.readouterr().err
    assert "do not fit this run's model" in err and "Traceback" not in err
