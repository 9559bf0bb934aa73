"""Task embedding: a bi-encoder on pairs (cosine, contrastive, teacher losses), `lmtune embed`, and
/v1/embeddings through the real openai client."""

import json
import socket
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.errors import ConfigError, DataError
from lmtune.tasks.embedding import EmbeddingTask
from lmtune.training.run import train

from conftest import DATA, write_jsonl

STSB = [f"data.train={DATA / 'stsb' / 'train.jsonl'}", f"data.validation={DATA / 'stsb' / 'validation.jsonl'}",
        "data.format=pairs", "data.score_range=[0, 5]", "task.name=embedding", "data.max_samples=64",
        "data.max_eval_samples=32", "data.max_length=48"]
STEPS = ["train.max_steps=8", "train.batch_size=8", "train.lr=5e-3", "train.logging_steps=1", "train.precision=fp32"]


def losses(run):
    return [json.loads(l)["loss"] for l in (run / "log.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, tiny_bert):
    out = tmp_path_factory.mktemp("embedding") / "run"
    train(load_config(None, [f"model.name={tiny_bert}", "method.name=full", *STSB, *STEPS, f"output.dir={out}"]))
    return out


def test_cosine_loss_trains_and_reports_correlations(bert_run):
    metrics = json.loads((bert_run / "metrics.json").read_text())
    assert {"pearson", "spearman", "recall_at_1", "loss"} <= set(metrics["final"])
    steps = losses(bert_run)
    assert min(steps[-3:]) < steps[0]
    from safetensors.torch import load_file

    saved = load_file(bert_run / "model" / "model.safetensors")
    assert saved and not any("pooler" in k for k in saved)  # built without BERT's pooler: no weight without a gradient


def test_losses_match_their_definitions(llama_tokenizer):
    """cosine: (cos - gold/5)^2; contrastive: cross-entropy of each anchor over the batch's positives
    and negatives at temperature 0.05 (sentence-transformers' MultipleNegativesRankingLoss, scale 20)."""
    torch.manual_seed(0)
    a, b, n = (F.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
    score = torch.tensor([0.0, 2.5, 4.0, 5.0])

    def loss(setting, vectors):
        cfg = load_config(None, ["task.name=embedding", "data.format=pairs", "data.score_range=[0, 5]", f"task.loss={setting}"])
        return EmbeddingTask(cfg, llama_tokenizer, None).loss_of(vectors, {"score": score}).item()

    cosine = loss("cosine", torch.cat([a, b]))
    assert cosine == pytest.approx(((a * b).sum(-1) - score / 5).pow(2).sum().item(), rel=1e-5)
    contrastive = loss("contrastive", torch.cat([a, b, n]))
    assert contrastive == pytest.approx(F.cross_entropy(a @ torch.cat([b, n]).T * 20, torch.arange(4), reduction="sum").item(), rel=1e-5)
    both = loss("{cosine: 1, contrastive: 0.5}", torch.cat([a, b, n]))
    assert both == pytest.approx(cosine + 0.5 * contrastive, rel=1e-5)


def test_contrastive_pairs_with_hard_negatives_train_and_report_recall(tmp_path, tiny_llama):
    rows = [json.loads(l) for l in (DATA / "stsb" / "train.jsonl").read_text().splitlines()[:96]]
    triples = [{"anchor": r["sentence1"], "positive": r["sentence2"], "negative": o["sentence2"]}
               for r, o in zip(rows, rows[1:] + rows[:1])]
    write_jsonl(tmp_path / "train.jsonl", triples[:64])
    write_jsonl(tmp_path / "val.jsonl", triples[64:])
    out = tmp_path / "run"
    metrics = train(load_config(None, [
        f"model.name={tiny_llama}", "method.name=lora", "data.format=pairs", "task.name=embedding", "task.loss=contrastive",
        "task.pooling=last", f"data.train={tmp_path / 'train.jsonl'}", f"data.validation={tmp_path / 'val.jsonl'}",
        *STEPS, f"output.dir={out}"])).metrics
    assert set(metrics["final"]) == {"recall_at_1", "loss"}
    assert 0 <= metrics["final"]["recall_at_1"] <= 1
    steps = losses(out)
    assert min(steps[-3:]) < steps[0]


def test_teacher_embeddings_are_the_mse_targets(tmp_path, tiny_bert, bert_run):
    """Distillation: a fresh student learns the trained run's embeddings; mse falls."""
    out = tmp_path / "student"
    metrics = train(load_config(None, [f"model.name={tiny_bert}", "method.name=full", *STSB, *STEPS,
                                       "task.loss={cosine: 1, mse: 10}", f"task.teacher={bert_run}", f"output.dir={out}"])).metrics
    assert "spearman" in metrics["final"]
    with pytest.raises(ConfigError, match="mse / euclidean compare with a teacher's embeddings: set task.teacher"):
        load_config(None, [f"model.name={tiny_bert}", *STSB, "task.loss=mse"])


def test_bad_pairs_rows_name_the_line(tmp_path, tiny_bert):
    base = [f"model.name={tiny_bert}", "data.format=pairs", "task.name=embedding", f"output.dir={tmp_path / 'run'}", *STEPS]
    write_jsonl(tmp_path / "range.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 3}, {"sentence1": "a", "sentence2": "b", "score": 7}])
    with pytest.raises(DataError, match=r"range.jsonl:2: field 'score' is 7, outside data.score_range \[0, 5\]"):
        train(load_config(None, [*base, f"data.train={tmp_path / 'range.jsonl'}", "data.score_range=[0, 5]"]))
    with pytest.raises(DataError, match=r"range.jsonl:1: scored pairs need data.score_range"):
        train(load_config(None, [*base, f"data.train={tmp_path / 'range.jsonl'}"]))
    write_jsonl(tmp_path / "shape.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"shape.jsonl:1: a pairs row has sentence1, sentence2 and score, or anchor and positive"):
        train(load_config(None, [*base, f"data.train={tmp_path / 'shape.jsonl'}"]))


def test_embed_command_writes_vectors_in_input_order(bert_run, tmp_path, capsys):
    texts = ["a short one", "a much longer sentence about a film that goes on and on", "mid length text here"]
    write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    assert main(["embed", str(bert_run), "--input", str(tmp_path / "texts.jsonl"), "--output", str(tmp_path / "v.npy"),
                 "--batch-size", "2"]) == 0
    vectors = np.load(tmp_path / "v.npy")
    from lmtune.infer.embed import load_embedder

    one_by_one = torch.stack([load_embedder(bert_run).embed([t])[0][0] for t in texts]).numpy()
    np.testing.assert_allclose(vectors, one_by_one, rtol=1e-4, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)  # task.normalize
    assert main(["embed", str(bert_run), "--input", str(tmp_path / "texts.jsonl"), "--output", str(tmp_path / "v.npy")]) == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embeddings_endpoint_with_the_openai_client(bert_run):
    import uvicorn
    from openai import OpenAI

    from lmtune.api import serve_app
    from lmtune.infer.embed import load_embedder

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(serve_app([str(bert_run)]), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        texts = ["a fine film", "a dreadful film"]
        reply = client.embeddings.create(model=bert_run.name, input=texts)  # the client asks for base64 by default
        got = np.array([d.embedding for d in reply.data])
        floats = client.embeddings.create(model=bert_run.name, input=texts, encoding_format="float")
        expected = load_embedder(bert_run).embed(texts)[0].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.array([d.embedding for d in floats.data]), expected, rtol=1e-4, atol=1e-5)
        assert reply.usage.prompt_tokens > 0 and [d.index for d in reply.data] == [0, 1]
        import openai

        with pytest.raises(openai.BadRequestError, match="makes embeddings; use POST /v1/embeddings"):
            client.chat.completions.create(model=bert_run.name, messages=[{"role": "user", "content": "hi"}])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
