"""`lmtune ui`: routes through FastAPI's TestClient, and runs started, stopped and resumed from it as
processes of their own."""

import html
import json
import re
import time
from html.parser import HTMLParser
from urllib.parse import unquote_plus

import pytest
import yaml
from fastapi.testclient import TestClient

from lmtune.api import ui_app
from lmtune.config import load_config, validate_config
from lmtune.plot import plot_confusion
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
    assert client.get("/runs/done/confusion_matrix.png").status_code == 404 and "confusion" not in page
    plot_confusion([[3, 1], [2, 4]], ["negative", "positive"], runs / "done" / "confusion_matrix.png")
    assert "confusion_matrix.png" in client.get("/runs/done").text
    assert client.get("/runs/done/confusion_matrix.png").content.startswith(b"\x89PNG")
    assert client.get("/runs/../etc").status_code == 404 and client.get("/runs/nothing").status_code == 404
    metrics = runs / "done" / "metrics.json"  # a classifier that learned nothing (training/learned.py) says so here too
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "warnings": ["the run has not learned the task"]}))
    assert 'role="alert">warning: the run has not learned the task</p>' in client.get("/runs/done").text
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
    base = client.post("/v1/chat/completions", json={"model": "done@base", "messages": [{"role": "user", "content": "hi"}],
                                                     "temperature": 0, "max_tokens": 4})
    engines = client.app.state.engines
    assert base.status_code == 200 and engines["done@base"].model is not engines["done"].model  # the model without the adapter
    assert client.post("/v1/chat/completions", json={"model": "nothing", "messages": [{"role": "user", "content": "hi"}]}).status_code == 404


class FormReader(HTMLParser):
    """The values a browser would send for the page's run form: inputs and selected options."""

    def __init__(self):
        super().__init__()
        self.values, self.select = {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("name") and a.get("type") != "file":
            self.values[a["name"]] = a.get("value") or ""
        elif tag == "select":
            self.select = a.get("name")
        elif tag == "option" and self.select and ("selected" in a or self.select not in self.values):
            self.values[self.select] = a.get("value") or ""  # the first option unless one is selected


def form_of(html: str) -> dict:
    reader = FormReader()
    reader.feed(html)
    return {k: v for k, v in reader.values.items() if k not in ("config",)}


def without_output(cfg) -> dict:
    dumped = cfg.model_dump(mode="json")
    dumped.pop("output")
    return dumped


def test_the_form_has_every_key_and_round_trips_to_the_config_the_cli_loads(tmp_path, tiny_llama):
    config = tiny_config(tmp_path, tiny_llama)
    client = TestClient(ui_app(tmp_path / "runs", tmp_path / "configs"))
    page = client.get("/new", params={"config": config}).text
    values = form_of(page)
    cfg = load_config(tmp_path / "configs" / config)
    assert values["train.lr"] == "0.005" and values["method.r"] == "4" and values["task.name"] == "label_tokens"
    assert 'name="train.scheduler"' in page and '<option value="cosine"' in page  # an enum is a select
    assert "gradient clipping by global norm" in page  # each key's description
    checked = client.post("/new/check", data={**values, "run_name": "x"}).text
    written = yaml.safe_load(html.unescape(re.search(r'<pre id="yaml">(.*?)</pre>', checked, re.S).group(1)))
    assert without_output(validate_config(written)) == without_output(cfg)  # the page runs what the file says
    assert "lmtune train" in checked and "--output-dir" in checked
    # A bad value: the CLI's message, beside its field; nothing is started.
    bad = client.post("/new", data={**values, "run_name": "x", "train.lr": "fast", "method.r": "0"})
    assert bad.status_code == 400 and not (tmp_path / "runs" / "x").exists()
    field = bad.text[bad.text.index('name="train.lr"'):]
    assert field.index("train.lr: Input should be a valid number") < field.index('class="field"')
    assert "method.r: Input should be greater than 0" in bad.text
    # Switching the method shows that method's keys, from its defaults (as method.name=ia3 does on the CLI).
    ia3 = client.post("/new/fields", data={**values, "method.name": "ia3"}, headers={"HX-Trigger-Name": "method.name"}).text
    assert 'name="method.r"' not in ia3 and 'name="method.feedforward_modules"' in ia3 and 'name="train.lr" value="0.005"' in ia3
    # An uploaded YAML fills the form; a broken one says why.
    uploaded = client.post("/new/upload", files={"file": ("mine.yaml", b"train:\n  lr: 0.125\n")}).text
    assert form_of(uploaded)["train.lr"] == "0.125" and "mine.yaml" in uploaded
    broken = client.post("/new/upload", files={"file": ("mine.yaml", b"train: [")})
    assert broken.status_code == 400 and "mine.yaml: not valid YAML" in broken.text
    # The live estimate and data preview are lmtune plan's and lmtune data's output.
    planned = client.post("/new/plan", data=values).text
    assert "peak" in planned and "fits" in planned and "optimizer steps per epoch" in planned
    previewed = client.post("/new/data", data=values).text
    assert "trained-on tokens" in previewed and "background-color" in previewed  # the loss mask, highlighted


def test_runs_queue_start_one_at_a_time_stop_and_resume(tmp_path, tiny_llama):
    runs = tmp_path / "runs"
    config = tiny_config(tmp_path, tiny_llama, save_steps=2, epochs=40)  # long enough to stop it midway
    with TestClient(ui_app(runs, tmp_path / "configs")) as client:  # `with`: the queue's starter runs
        values = form_of(client.get("/new", params={"config": config}).text)
        started = client.post("/new", data={**values, "run_name": "a", "train.seed": "3"}, follow_redirects=False)
        assert started.status_code == 303 and unquote_plus(started.headers["location"]) == "/runs/a?message=started"
        assert (runs / ".ui-configs" / "a.yaml").is_file()
        second = client.post("/new", data={**values, "run_name": "b", "train.epochs": "1", "train.max_steps": "3"},
                             follow_redirects=False)
        assert unquote_plus(second.headers["location"]) == "/runs/b?message=queued (position 1)"
        assert "queued" in client.get("/runs/b").text and "Remove from the queue" in client.get("/runs/b").text
        third = client.post("/new", data={**values, "run_name": "c"}, follow_redirects=False)
        assert "position 2" in unquote_plus(third.headers["location"])
        client.post("/queue/c/remove")
        assert [r["name"] for r in client.get("/api/runs").json() if r["state"] == "queued"] == ["b"]
        wait_state(client, "a", {"running"})
        while not list((runs / "a" / "checkpoints").glob("checkpoint-*")):
            time.sleep(0.2)
        client.post("/runs/a/stop")
        stopped = wait_state(client, "a", {"interrupted", "failed"})
        assert stopped["state"] == "interrupted"
        assert (runs / ".ui-logs" / "a.log").is_file() and "Resume with" in (runs / ".ui-logs" / "a.log").read_text()
        # The slot is free: b starts by itself. Resuming a meanwhile queues it behind b.
        wait_state(client, "b", {"running", "finished"})
        cfg_path = runs / "a" / "config.yaml"
        raw = yaml.safe_load(cfg_path.read_text())
        raw["train"]["epochs"] = 1  # fewer epochs to go: the resumed run ends, from its checkpoint
        cfg_path.write_text(yaml.safe_dump(raw))
        resumed = unquote_plus(client.post("/runs/a/resume", follow_redirects=False).headers["location"])
        assert resumed in ("/runs/a?message=resumed", "/runs/a?message=resume queued (position 1)")
        assert wait_state(client, "b", {"finished", "failed"})["state"] == "finished"
        done = wait_state(client, "a", {"finished", "failed"})
        assert done["state"] == "finished", (runs / ".ui-logs" / "a.log").read_text()[-2000:]
        assert not (runs / "c").exists()
