"""Tasks with their own heads: seq_cls (encoder and decoder), regression (pairs), through train()."""

import json

import pytest
import torch

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.errors import ConfigError
from lmtune.training.run import train

from conftest import DATA, write_jsonl

CLS = [f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}", f"data.validation={DATA / 'rotten_tomatoes' / 'test.jsonl'}",
       "data.format=classification", "data.labels=[negative, positive]", "task.name=seq_cls",
       "data.max_samples=64", "data.max_eval_samples=32", "data.max_length=64"]
STEPS = ["train.max_steps=8", "train.batch_size=8", "train.lr=5e-3", "train.logging_steps=1", "train.precision=fp32"]


def losses(run):
    return [json.loads(l)["loss"] for l in (run / "log.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("family, method", [("bert", "full"), ("bert", "lora"), ("llama", "lora"), ("gpt2", "full")])
def test_seq_cls_trains_saves_and_scores_the_same_after_reloading(tmp_path, request, capsys, family, method):
    out = tmp_path / "run"
    # 16 rows seen 6 times: the training loss must fall (the head and the method's weights learn them).
    cfg = load_config(None, [f"model.name={request.getfixturevalue(f'tiny_{family}')}", f"output.dir={out}",
                             f"method.name={method}", *CLS, *STEPS, "data.max_samples=16", "train.max_steps=12",
                             "train.lr=1e-2", "task.class_weights=balanced"])
    metrics = train(cfg).metrics
    steps = losses(out)
    assert len(steps) == 12 and sum(steps[-2:]) < sum(steps[:2]), steps
    assert {"accuracy", "f1", "loss"} <= set(metrics["final"])
    assert (out / "confusion_matrix.png").stat().st_size > 5_000
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0  # the head was saved with the adapter / model
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert main(["generate", str(out), "hello"]) == 2
    assert "predicts labels, it does not generate" in capsys.readouterr().err


def test_regression_on_sentence_pairs(tmp_path, tiny_bert):
    rows = [json.loads(l) for l in (DATA / "rotten_tomatoes" / "validation.jsonl").read_text().splitlines()[:80]]
    # A learnable target: how much of the first text's length the pair has, scaled to 0..5 like STS.
    pairs = [{"sentence1": a["text"], "sentence2": b["text"], "score": round(5 * len(a["text"]) / (len(a["text"]) + len(b["text"])), 3)}
             for a, b in zip(rows, rows[1:] + rows[:1])]
    write_jsonl(tmp_path / "train.jsonl", pairs[:64])
    write_jsonl(tmp_path / "val.jsonl", pairs[64:])
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_bert}", f"output.dir={out}", "method.name=full", "task.name=regression",
                             "data.format=regression", f"data.train={tmp_path / 'train.jsonl'}",
                             f"data.validation={tmp_path / 'val.jsonl'}",
                             "data.columns={text: sentence1, text_pair: sentence2, label: score}", *STEPS, "task.loss=huber"])
    metrics = train(cfg).metrics
    assert {"pearson", "spearman", "rmse", "loss"} <= set(metrics["final"])
    steps = losses(out)
    assert min(steps[-3:]) < steps[0]
    assert -1 <= metrics["final"]["pearson"] <= 1


def test_pairs_get_token_type_ids_on_bert(tiny_bert):
    from transformers import AutoTokenizer

    from lmtune.data.examples import LabelledText, to_row
    from lmtune.tasks.seq_cls import encode_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [to_row(LabelledText(text="a good film", pair="a bad film", label=1, messages=[]))]
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    out = encode_texts(tokenizer, batch, 64)
    ids, types = out["input_ids"][0], out["token_type_ids"][0]
    sep = tokenizer.sep_token_id
    assert ids[0] == tokenizer.cls_token_id and ids.count(sep) == 2
    first_sep = ids.index(sep)
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}


@pytest.mark.parametrize("overrides, message", [
    (["task.name=seq_cls", "data.format=instruction"], "task seq_cls needs data.format: classification"),
    (["task.name=regression", "data.format=regression", "task.class_weights=balanced"], "class_weights is for tasks"),
    (["task.name=seq_cls", "data.format=classification", "data.labels=[a, b]", "task.class_weights=[1.0]"], "one weight per entry"),
    (["task.name=seq_cls", "data.format=classification", "data.labels=[a, b]", "data.packing=true"], "predicts per row"),
])
def test_task_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_regression_and_token_rows_name_the_line(tmp_path):
    from lmtune.data.dataset import load_examples
    from lmtune.errors import DataError

    write_jsonl(tmp_path / "r.jsonl", [{"text": "ok", "label": 1.5}, {"text": "bad", "label": "high"}])
    with pytest.raises(DataError, match=r"r.jsonl:2: field 'label' must be a number"):
        load_examples(str(tmp_path / "r.jsonl"), load_config(None, ["data.format=regression", "task.name=regression"]).data)
    write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "B-x"]}, {"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match=r"t.jsonl:2: 2 tokens but 1 tags"):
        load_examples(str(tmp_path / "t.jsonl"), load_config(None, ["data.format=tokens", "task.name=token_cls", "data.labels=[O, B-x]"]).data)
    write_jsonl(tmp_path / "u.jsonl", [{"tokens": ["a"], "tags": ["B-y"]}])
    with pytest.raises(DataError, match=r"u.jsonl:1: tags\[0\] = 'B-y' is not one of data.labels"):
        load_examples(str(tmp_path / "u.jsonl"), load_config(None, ["data.format=tokens", "task.name=token_cls", "data.labels=[O, B-x]"]).data)


NER = [f"data.train={DATA / 'ner_wnut17' / 'train.jsonl'}", f"data.validation={DATA / 'ner_wnut17' / 'validation.jsonl'}",
       "data.format=tokens", "task.name=token_cls", "data.max_samples=32", "data.max_eval_samples=16", "data.max_length=64",
       "data.labels=[O, B-corporation, I-corporation, B-creative-work, I-creative-work, B-group, I-group, B-location, "
       "I-location, B-person, I-person, B-product, I-product]"]


def test_word_tags_go_to_the_first_sub_token_only(tiny_bert, llama_tokenizer):
    from transformers import AutoTokenizer

    from lmtune.tasks.token_cls import align_words

    bert = AutoTokenizer.from_pretrained(tiny_bert)
    words, tags = ["Empire", "zzqx", "."], [7, 8, 0]
    ids, labels, cut = align_words(bert, words, tags, 64)
    pieces = [bert(w, add_special_tokens=False)["input_ids"] for w in words]
    expected_ids = [bert.cls_token_id] + [i for p in pieces for i in p] + [bert.sep_token_id]
    expected = [-100] + [t for p, t in zip(pieces, tags) for t in [t] + [-100] * (len(p) - 1)] + [-100]
    assert ids == expected_ids and labels == expected and not cut
    assert len(pieces[1]) > 1  # a word split in several pieces: only its first carries the tag
    # Byte-level BPE: words after the first are tokenised with their leading space.
    ids, labels, _ = align_words(llama_tokenizer, ["New", "York"], [7, 8], 64)
    second = llama_tokenizer(" York", add_special_tokens=False)["input_ids"]
    assert ids[-len(second):] == second and labels[-len(second)] == 8
    assert [l for l in labels if l != -100] == [7, 8]
    # Cut at max_length between words, never inside one.
    ids, labels, cut = align_words(bert, words, tags, len(pieces[0]) + 3)
    assert cut and [l for l in labels if l != -100] == [7] and ids[-1] == bert.sep_token_id


def test_crf_decodes_only_valid_bio_sequences():
    from lmtune.tasks.crf import BioCRF

    tags = ["O", "B-per", "I-per", "B-loc", "I-loc"]
    crf = BioCRF(tags)
    torch.manual_seed(0)
    emissions = torch.randn(64, 12, len(tags)) * 5
    emissions[..., 2] += 3  # push towards I-per everywhere, which is invalid after O or at the start
    for row in crf.decode(emissions):
        names = [tags[t] for t in row]
        assert not names[0].startswith("I-")
        for before, tag in zip(names, names[1:]):
            if tag.startswith("I-"):
                assert before in (f"B-{tag[2:]}", tag), names
    # The loss trains the unconstrained parameters (gradients flow through the mask).
    loss = -crf(emissions, torch.zeros(64, 12, dtype=torch.long))
    loss.backward()
    assert crf.transitions.grad is not None and crf.transitions.grad.abs().sum() > 0
    assert isinstance(crf.transitions, torch.nn.Parameter)  # restored after the call


@pytest.mark.parametrize("family, method, crf", [("bert", "full", False), ("bert", "lora", True), ("llama", "lora", False),
                                                  ("bert", "full", True)])
def test_token_cls_trains_and_reloads(tmp_path, request, capsys, family, method, crf):
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={request.getfixturevalue(f'tiny_{family}')}", f"output.dir={out}",
                             f"method.name={method}", *NER, *STEPS, "train.lr=1e-2", "train.max_steps=12",
                             "data.max_samples=16", f"task.crf={str(crf).lower()}"])
    metrics = train(cfg).metrics
    steps = losses(out)
    assert sum(steps[-2:]) < sum(steps[:2]), steps
    assert {"f1", "precision", "recall", "accuracy", "loss"} <= set(metrics["final"])
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0  # the head (and the CRF) were saved
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert report["loss"] == pytest.approx(metrics["final"]["loss"], rel=1e-4)


DISTILL = [*STEPS, "method.name=lora", "method.dropout=0", "train.max_steps=6",
           f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}", "data.format=classification",
           "data.labels=[negative, positive]", "task.name=label_tokens", "data.max_samples=24", "data.max_length=64"]


def test_distillation_with_alpha_1_is_plain_training(tmp_path, tiny_llama):
    plain, distilled = tmp_path / "plain", tmp_path / "distilled"
    train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={plain}", *DISTILL]))
    train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={distilled}", *DISTILL,
                             f"distill={{teacher: {tiny_llama}, alpha: 1.0}}"]))
    from safetensors.torch import load_file

    a = load_file(plain / "adapter" / "adapter_model.safetensors")
    b = load_file(distilled / "adapter" / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_distillation_from_a_trained_run_into_a_smaller_student(tmp_path, tiny_llama):
    teacher = tmp_path / "teacher"
    train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={teacher}", *DISTILL]))
    student = tmp_path / "student"
    metrics = train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={student}", *DISTILL, "model.keep_layers=1",
                                       f"distill={{teacher: {teacher}, alpha: 0.5, temperature: 2.0}}"])).metrics
    full = train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'full'}", *DISTILL])).metrics
    assert metrics["train"]["total_params"] < full["train"]["total_params"]
    steps = losses(student)
    assert len(steps) == 6 and all(s == s for s in steps)
    from lmtune.loading import load_for_inference

    model = load_for_inference(student).model  # the 1-block student reloads as it was trained
    assert model.base_model.model.config.num_hidden_layers == 1


def test_label_word_distillation_compares_the_label_words_only(tiny_llama, llama_tokenizer):
    """The teacher's distribution over the rest of the vocabulary is not the task's: it must not pull."""
    from lmtune.data.templates import Renderer
    from lmtune.tasks import TASKS
    from lmtune.tasks.distill import DistilledTask

    cfg = load_config(None, [f"model.name={tiny_llama}", *DISTILL])
    task = TASKS.get("label_tokens")(cfg, llama_tokenizer, Renderer(llama_tokenizer, cfg.data.template))
    words = task.label_token_ids
    student = torch.randn(3, len(llama_tokenizer))
    teacher = student.clone()
    others = [i for i in range(student.shape[1]) if i not in words]
    teacher[:, others] += 5 * torch.randn(3, len(others))
    task.logits_and_targets = lambda model, inputs: (student if model == "student" else teacher, torch.tensor([words[0]] * 3))
    soft_only = DistilledTask(task, "teacher", alpha=0.0, temperature=2.0)
    assert soft_only.loss("student", {})[0].item() == pytest.approx(0.0, abs=1e-5)
    teacher[:, words[0]] += 3.0  # the teacher prefers the first label word more than the student does
    assert soft_only.loss("student", {})[0].item() > 0.1


def test_label_word_loss_is_the_cross_entropy_among_the_label_words(tmp_path, tiny_llama, llama_tokenizer):
    """task.loss=label_words: the rest of the vocabulary does not enter the loss, in training or evaluation."""
    import math

    import torch.nn.functional as F

    from lmtune.data.templates import Renderer
    from lmtune.tasks import TASKS

    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *CLS, *STEPS, "task.name=label_tokens",
                             "task.loss=label_words"])
    task = TASKS.get("label_tokens")(cfg, llama_tokenizer, Renderer(llama_tokenizer, cfg.data.template))
    words = task.label_token_ids
    logits = torch.randn(3, len(llama_tokenizer))
    targets = torch.tensor([words[1], words[0], words[1]])
    expected = F.cross_entropy(logits[:, words], torch.tensor([1, 0, 1]), reduction="sum")
    assert task.label_word_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    others = [i for i in range(logits.shape[1]) if i not in words]
    logits[:, others] += 5 * torch.randn(3, len(others))
    assert task.label_word_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    metrics = train(cfg).metrics
    # Over two words a random model's loss is near log 2; over the whole vocabulary it is near log(vocabulary).
    assert losses(out)[0] < 2 * math.log(2) < math.log(len(llama_tokenizer)) / 2
    assert metrics["final"]["loss"] < 2 * math.log(2) and "accuracy" in metrics["final"]
    # A random model's most likely next word is almost never one of two; the vocabulary's loss makes it one.
    assert metrics["zero_shot"]["label_word_answers"] < 0.1
    vocabulary = train(cfg.model_copy(update={"task": cfg.task.model_copy(update={"loss": "vocabulary"}),
                                              "output": cfg.output.model_copy(update={"dir": str(tmp_path / "vocabulary")})}))
    assert vocabulary.metrics["final"]["label_word_answers"] > 0.9
    # So generation answers with a label word, and stops after it instead of repeating it.
    from lmtune.generation import SamplingParams
    from lmtune.infer.load import load_engine

    _, engine = load_engine(tmp_path / "vocabulary")
    done = engine.generate([engine.prompt_ids([{"role": "user", "content": "a fine film"}])], SamplingParams(max_new_tokens=20))[0]
    assert done.ids in [[i] for i in task.label_token_ids] and done.finish_reason == "stop"


def test_teacher_with_another_tokenizer_is_refused(tmp_path, tiny_llama, tiny_bert):
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'run'}", *DISTILL,
                             f"distill={{teacher: {tiny_bert}}}"])
    with pytest.raises(ConfigError, match="another tokenizer than the student"):
        train(cfg)
    with pytest.raises(ConfigError, match="distill works with tasks"):
        load_config(None, ["task.name=regression", "data.format=regression", "distill={teacher: x}"])


def test_a_teacher_that_is_not_there_fails_before_the_student_loads(tmp_path, tiny_llama, monkeypatch):
    """`runs/sentiment_lora` before that run exists: a missing path under a local directory, not
    a hub id to fetch, and said before the student's model loads."""
    import lmtune.training.prepare as prepare_module

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    loaded = []
    monkeypatch.setattr(prepare_module, "load_for_training", lambda *a, **k: loaded.append(1))
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'run'}", *DISTILL,
                             "distill={teacher: runs/sentiment_lora}"])
    with pytest.raises(ConfigError, match=r"distill.teacher: runs/sentiment_lora does not exist \(runs/ is a local directory"):
        train(cfg)
    assert not loaded
