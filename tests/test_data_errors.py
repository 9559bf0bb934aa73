"""Bad rows give a DataError naming file, line and field; on_bad_rows: skip counts them instead."""

import json
import re

import pytest

from lmtune.config import load_config
from lmtune.data.dataset import load_examples
from lmtune.errors import DataError

from conftest import write_jsonl

CLS = ["data.format=classification", "data.labels=[negative, positive]", "task.name=label_tokens"]


def check(tmp_path, overrides, rows, pattern, suffix=".jsonl"):
    path = tmp_path / f"d{suffix}"
    write_jsonl(path, rows)
    cfg = load_config(None, overrides)
    with pytest.raises(DataError, match=pattern):
        load_examples(str(path), cfg.data)
    return path, cfg


@pytest.mark.parametrize(
    "row, pattern",
    [
        ({"label": 1}, r"d.jsonl:2: field 'text' is missing"),
        ({"text": "  ", "label": 1}, r"d.jsonl:2: field 'text' is empty"),
        ({"text": 5, "label": 1}, r"d.jsonl:2: field 'text' must be a string, got int"),
        ({"text": "ok", "label": "meh"}, r"d.jsonl:2: unknown label 'meh'"),
        ({"text": "ok", "label": 7}, r"d.jsonl:2: label 7 is out of range"),
        ({"text": "ok", "label": 1.5}, r"d.jsonl:2: field 'label' must be an int or a label name, got float"),
        ({"text": "ok"}, r"d.jsonl:2: field 'label' is missing"),
    ],
)
def test_bad_classification_rows(tmp_path, row, pattern):
    check(tmp_path, CLS, [{"text": "good", "label": 0}, row], pattern)


def test_bad_json_line(tmp_path):
    check(tmp_path, CLS, [{"text": "good", "label": 0}, '{"text": "broken",'], r"d.jsonl:2: not valid JSON")


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8"):
        load_examples(str(path), load_config(None, CLS).data)


def test_bad_instruction_rows(tmp_path):
    check(tmp_path, ["data.format=instruction"], [{"instruction": "x"}], r"d.jsonl:1: field 'output' is missing")
    check(tmp_path, ["data.format=instruction", "data.columns={output: response}"], [{"instruction": "x"}],
          r"field 'response' is missing")


@pytest.mark.parametrize(
    "messages, pattern",
    [
        ([], r"field 'messages' is empty"),
        ([{"role": "user", "content": "hi"}], r"ends on a user turn"),
        ([{"role": "robot", "content": "hi"}], r"messages\[0\]: unknown role 'robot'"),
        ([{"role": "user", "content": "hi"}, {"content": "x"}], r"messages\[1\]: has no role; use one of"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], r"messages\[1\]: content must be"),
        ([{"role": "assistant", "content": "hi"}], r"assistant turn before any user turn"),
    ],
)
def test_bad_conversations(tmp_path, messages, pattern):
    check(tmp_path, ["data.format=messages"], [{"messages": messages}], pattern)


def test_skip_counts_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "good", "label": 0}, {"text": "", "label": 1}, "not json",
                                              {"text": "fine", "label": "positive"}])
    cfg = load_config(None, CLS + ["data.on_bad_rows=skip"])
    examples, skipped = load_examples(str(path), cfg.data)
    assert skipped == 2
    assert [e["label"] for e in examples] == [0, 1]
    # every row bad: "no usable rows" says how many were skipped and why the first was
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "", "label": 1}, "not json"])
    with pytest.raises(DataError, match=r"bad.jsonl: no usable rows; all 2 were bad and skipped \(data.on_bad_rows: skip\), "
                                        r"the first: .*bad.jsonl:1: "):
        load_examples(str(bad), cfg.data)


def test_csv_rows_name_their_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood,0\n,1\n")
    with pytest.raises(DataError, match=r"d.csv:3: field 'text' is missing|d.csv:3: field 'text' is empty"):
        load_examples(str(path), load_config(None, CLS).data)


def test_a_file_with_other_column_names_is_told_which_it_has_and_not_to_skip(tmp_path):
    """The first row failing means the file, not a row, is wrong: skipping would drop every row."""
    path = tmp_path / "reviews.csv"
    path.write_text("review,sentiment\na fine film,positive\n")
    with pytest.raises(DataError) as caught:
        load_examples(str(path), load_config(None, CLS).data)
    assert str(caught.value) == (f"{path}:2: field 'text' is missing; every row needs a non-empty text (the row has "
                                 "'review', 'sentiment': set data.columns.text to the one that holds it)")
    mapped = load_config(None, CLS + ["data.columns={text: review}"]).data
    with pytest.raises(DataError, match=r"field 'label' is missing \(the row has 'review', 'sentiment': set data.columns.label"):
        load_examples(str(path), mapped)
    assert load_examples(str(path), load_config(None, CLS + ["data.columns={text: review, label: sentiment}"]).data)[0]


def test_a_bad_row_among_good_ones_offers_skipping(tmp_path):
    check(tmp_path, CLS, [{"text": "good", "label": 0}, {"label": 1}], r"(?s)d.jsonl:2: .*set data.on_bad_rows: skip")


def test_json_list_and_parquet_are_read(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    cfg = load_config(None, ["data.format=instruction"]).data
    assert len(load_examples(str(tmp_path / "d.json"), cfg)[0]) == 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    examples, _ = load_examples(str(tmp_path / "d.parquet"), cfg)
    assert examples[1]["messages"][0]["content"] == "c\n\nd"


def test_missing_file_and_unknown_type(tmp_path, monkeypatch):
    cfg = load_config(None, ["data.format=instruction"]).data
    with pytest.raises(DataError, match="data file not found$"):
        load_examples(str(tmp_path / "nope.jsonl"), cfg)
    monkeypatch.chdir(tmp_path)  # a config's relative path, run from another directory: say where it looked
    with pytest.raises(DataError, match=re.escape(f"data/nope.jsonl: data file not found (relative paths are read from the current directory, {tmp_path})")):
        load_examples("data/nope.jsonl", cfg)
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(DataError, match="unsupported file type"):
        load_examples(str(tmp_path / "d.xml"), cfg)
