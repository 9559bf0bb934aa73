"""`lmtune ui`: routes through FastAPI's TestClient, and runs started, stopped and resumed from it as
processes of their own."""

import time

import pytest
import yaml
from fastapi.testclient import TestClient

from lmtune.api import ui_app
from lmtune.config import load_config
from lmtune.training.run import train

from conftest import DATA


def tiny_config(tmp_path, tiny_llama, **train_keys) -> str:
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    cfg = {"model": {"name": str(tiny_llama)}, "method": {"name": "lora", "r": 4},
           "data": {"train": str(DATA / "rotten_tomatoes" / "validation.jsonl"), "validation": str(DATA / "rotten_tomatoes" / "test.jsonl"),
                    "format": "classification", "labels": ["negative", "positive"], "max_samples": 64, "max_eval_samples": 16,
                    "max_length": 64},
           "task": {"name": "label_tokens"},
           "train": {"batch_size": 4, "lr": 5e-3, "logging_steps": 1, "precision": "fp32", **train_keys}}
    (configs / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return "tiny.yaml"


def wait_state(client, name, states, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = {r["name"]: r for r in client.get("/api/runs").json()}
        if name in runs and runs[name]["state"] in states:
            return runs[name]
        time.sleep(0.5)
    raise AssertionError(f"{name} never reached {states}: {runs.get(name)}")


def test_token_is_required_on_every_request(tmp_path):
    client = TestClient(ui_app(tmp_path / "runs", tmp_path / "configs", token="s3cret"))
    assert client.get("/").status_code == 401
    assert client.get("/api/runs").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/?token=s3cret").status_code == 200  # sets the cookie
    assert client.get("/api/runs").status_code == 200
    assert TestClient(client.app).get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_finished_run_its_page_and_its_event_stream(tmp_path, tiny_llama):
    runs = tmp_path / "runs"
    train(load_config(None, [f"model.name={tiny_llama}", f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}",
                             "data.format=classification", "data.labels=[negative, positive]", "task.name=label_tokens",
                             "data.max_samples=16", "train.max_steps=2", "train.logging_steps=1", "train.precision=fp32", "train.zero_shot_eval=false",
                             f"output.dir={runs / 'done'}"]), reporters=[])
    client = TestClient(ui_app(runs, tmp_path / "configs"))
    assert "done" in client.get("/runs-table").text and "finished" in client.get("/runs-table").text
    page = client.get("/runs/done").text
    assert "finished" in page and 'aria-label="training loss and learning rate by step"' in page
    with client.stream("GET", "/runs/done/events") as stream:
        kinds = [line for line in stream.iter_lines() if line.startswith(("data:", "event:"))]
    assert '"event": "started"' in kinds[0] and any('"event": "step"' in k for k in kinds) and kinds[-2] == "event: end"
    assert client.get("/runs/../etc").status_code == 404 and client.get("/runs/nothing").status_code == 404
    # Two runs compared: both curves (from log.jsonl) and their final metrics side by side.
    train(load_config(None, [f"model.name={tiny_llama}", f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}",
                             "data.format=classification", "data.labels=[negative, positive]", "task.name=label_tokens",
                             "data.max_samples=16", "train.max_steps=3", "train.logging_steps=1", "train.precision=fp32",
                             "train.zero_shot_eval=false", "train.lr=1e-2", f"output.dir={runs / 'other'}"]), reporters=[])
    assert 'name="run" value="other"' in client.get("/runs-table").text
    page = client.get("/compare", params=[("run", "done"), ("run", "other")]).text
    assert '"done": [[1,' in page and '"other": [[1,' in page and 'id="compare-metrics"' in page
    # Export from the page: a process of its own, listed on the run's page with its last line.
    assert client.post("/runs/done/export", data={"format": "safetensors"}, follow_redirects=False).status_code == 303
    exported = runs / ".ui-exports" / "done-safetensors"
    deadline = time.monotonic() + 120
    while "exported a self-contained model" not in client.get("/runs/done").text:
        assert time.monotonic() < deadline, client.get("/runs/done").text[-2000:]
        time.sleep(0.5)
    assert (exported / "README.md").is_file()
    again = client.post("/runs/done/export", data={"format": "safetensors"})
    assert "exists already" in again.text
    # Chat with the finished run through the same OpenAI-compatible router as `lmtune serve`.
    reply = client.post("/v1/chat/completions", json={"model": "done", "messages": [{"role": "user", "content": "hi"}],
                                                      "temperature": 0, "max_tokens": 4})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["role"] == "assistant"
    assert client.post("/v1/chat/completions", json={"model": "nothing", "messages": [{"role": "user", "content": "hi"}]}).status_code == 404


def test_new_run_form_validates_like_the_cli_then_starts_stops_and_resumes_a_process(tmp_path, tiny_llama):
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path, tiny_llama, save_steps=2, epochs=40)  # long enough to stop it midway
    client = TestClient(ui_app(runs, tmp_path / "configs"))
    assert config in client.get("/new").text
    bad = client.post("/new", data={"config": config, "name": "a", "overrides": "train.lr=fast"})
    assert bad.status_code == 400 and "train.lr: Input should be a valid number" in bad.text and not (runs / "a").exists()
    started = client.post("/new", data={"config": config, "name": "a", "overrides": "train.seed=3"}, follow_redirects=False)
    assert started.status_code == 303 and started.headers["location"] == "/runs/a"
    wait_state(client, "a", {"running"})
    while not list((runs / "a" / "checkpoints").glob("checkpoint-*")):
        time.sleep(0.2)
    busy = client.post("/new", data={"config": config, "name": "b", "overrides": ""})
    assert busy.status_code == 400 and "one run at a time" not in busy.text and "still running" in busy.text
    client.post("/runs/a/stop")
    stopped = wait_state(client, "a", {"interrupted", "failed"})
    assert stopped["state"] == "interrupted"
    assert (runs / ".ui-logs" / "a.log").is_file() and "Resume with" in (runs / ".ui-logs" / "a.log").read_text()
    # Resume with fewer epochs to go: the run ends, from its checkpoint.
    cfg_path = runs / "a" / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    raw["train"]["epochs"] = 1
    cfg_path.write_text(yaml.safe_dump(raw))
    assert client.post("/runs/a/resume", follow_redirects=False).status_code == 303
    done = wait_state(client, "a", {"finished", "failed"})
    assert done["state"] == "finished", (runs / ".ui-logs" / "a.log").read_text()[-2000:]
