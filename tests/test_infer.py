"""Generation, chat and the OpenAI-compatible server on a tiny trained run."""

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lmtune.config import load_config
from lmtune.infer.chat import chat
from lmtune.generation import SamplingParams
from lmtune.infer.load import load_engine, load_engines
from lmtune.training.run import train

from conftest import DATA, write_jsonl

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("infer") / "run"
    train(load_config(None, [
        f"model.name={tiny_llama}", f"data.train={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}",
        "data.format=instruction", "task.name=sft", "data.max_samples=16", "data.max_length=64",
        "train.max_steps=2", "train.precision=fp32", "train.zero_shot_eval=false", f"output.dir={out}"]))
    return out


@pytest.fixture(scope="module")
def engine(run_dir):
    return load_engine(run_dir)[1]


def test_batched_greedy_generation_equals_one_by_one(engine):
    prompts = [engine.prompt_ids([{"role": "user", "content": text}]) for text in ("hi", "a much longer question about films", "ok")]
    params = SamplingParams(max_new_tokens=8)
    batched = engine.generate(prompts, params)
    alone = [engine.generate([p], params)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in alone]
    assert all(c.prompt_tokens == len(p) for c, p in zip(batched, prompts))


def test_sampling_with_a_seed_is_repeatable(engine):
    prompt = [engine.prompt_ids([{"role": "user", "content": "tell me"}])]
    params = SamplingParams(max_new_tokens=8, temperature=1.5, top_p=0.9, top_k=50, seed=3)
    assert engine.generate(prompt, params)[0].text == engine.generate(prompt, params)[0].text


def test_generate_file_through_the_cli(run_dir, tmp_path, capsys):
    from lmtune.cli import main

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "id": 1},
                                                  {"messages": [{"role": "user", "content": "yo"}], "id": 2}])
    assert main(["generate", str(run_dir), "--input", str(prompts), "--output", str(tmp_path / "a.jsonl"),
                 "--max-new-tokens", "4", "--batch-size", "2"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2] and all(isinstance(r["output"], str) for r in rows)
    assert main(["generate", str(run_dir), "--input", str(prompts)]) == 2
    assert "--input needs --output" in capsys.readouterr().err
    before = (tmp_path / "a.jsonl").read_text()
    assert main(["generate", str(run_dir), "--input", str(prompts), "--output", str(tmp_path / "a.jsonl")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "a.jsonl").read_text() == before
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi"}, {"question": "no prompt"}])
    assert main(["generate", str(run_dir), "--input", str(bad), "--output", str(tmp_path / "b.jsonl")]) == 2
    assert "bad.jsonl:2: expected" in capsys.readouterr().err and not (tmp_path / "b.jsonl").exists()


def test_chat_keeps_history_and_resets(engine):
    out = io.StringIO()
    chat(engine, SamplingParams(max_new_tokens=4), system="Be brief.", stdin=io.StringIO("hello\nmore\n/reset\nhi\n/exit\n"), stdout=out)
    text = out.getvalue()
    assert text.count("assistant> ") == 3 and "(conversation cleared)" in text


# ---- the server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(run_dir):
    import uvicorn

    from lmtune.infer.serve import build_app

    engines = load_engines([str(run_dir)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_app(engines, KEY), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", run_dir.name, engines[run_dir.name]
    srv.should_exit = True
    thread.join(timeout=10)


def client(base_url, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)


def test_models_and_plain_chat(server):
    url, model, engine = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == [model]
    reply = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0)
    expected = engine.generate([engine.prompt_ids([{"role": "user", "content": "hi"}])], SamplingParams(max_new_tokens=6))[0]
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens and reply.usage.completion_tokens == expected.completion_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_server_of_one_model_answers_requests_that_name_none(server):
    """curl users leave `model` out; vLLM and llama.cpp's server take the one model they serve."""
    url, model, _ = server
    user = [{"role": "user", "content": "hi"}]
    named = post(f"{url}/chat/completions", json.dumps({"model": model, "messages": user, "max_tokens": 4, "temperature": 0}).encode())
    unnamed = post(f"{url}/chat/completions", json.dumps({"messages": user, "max_tokens": 4, "temperature": 0}).encode())
    assert unnamed[0] == 200 and unnamed[1]["model"] == model
    assert unnamed[1]["choices"][0]["message"] == named[1]["choices"][0]["message"]
    status, body = post(f"{url}/completions", json.dumps({"prompt": "The film", "max_tokens": 3}).encode())
    assert status == 200 and body["model"] == model
    from types import SimpleNamespace
    from lmtune.infer.serve import name_the_model

    refused = name_the_model(SimpleNamespace(model=None), {"a": None, "b": None})
    assert refused.status_code == 400 and b"say which of a, b" in refused.body


def test_streamed_chat_equals_the_plain_answer(server):
    url, model, _ = server
    c = client(url)
    messages = [{"role": "user", "content": "tell me about films"}]
    plain = c.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0).choices[0].message.content
    pieces = [ch.choices[0].delta.content or "" for ch in
              c.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, stream=True)]
    assert "".join(pieces) == plain


def test_completions_and_stop_sequences(server):
    url, model, engine = server
    c = client(url)
    full = c.completions.create(model=model, prompt="The film", max_tokens=8, temperature=0).choices[0].text
    assert full == engine.generate([engine.prompt_ids(text="The film")], SamplingParams(max_new_tokens=8))[0].text
    assert len(full.strip()) > 2  # the tiny run repeats a word; the stop string below is inside it
    stop = full.strip()[1:3]
    cut = c.completions.create(model=model, prompt="The film", max_tokens=8, temperature=0, stop=[stop]).choices[0]
    assert stop not in cut.text and full.startswith(cut.text) and cut.finish_reason == "stop"


def test_sixteen_concurrent_requests_do_not_mix(server):
    url, model, _ = server
    c = client(url)
    questions = [f"question number {i}" for i in range(16)]

    def ask(q):
        return c.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], max_tokens=5, temperature=0).choices[0].message.content

    sequential = [ask(q) for q in questions]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(ask, questions))
    assert concurrent == sequential


def post(url: str, body: bytes) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_openai_errors(server):
    import openai

    url, model, _ = server
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    with pytest.raises(openai.NotFoundError) as e:
        client(url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "does not exist" in str(e.value)
    status, body = post(f"{url}/chat/completions", b"{not json")
    assert status == 400 and "message" in body["error"]
    status, body = post(f"{url}/chat/completions", json.dumps({"model": model, "messages": []}).encode())
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = post(f"{url}/chat/completions", json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "x"}], "temperature": 9}).encode())
    assert status == 400 and "temperature" in body["error"]["message"]
    # the server is still fine
    assert client(url).models.list().data[0].id == model


def test_client_errors_are_4xx_never_500(server):
    url, model, engine = server
    user = [{"role": "user", "content": "x"}]
    bad = [
        b"[1, 2, 3]",  # not an object
        json.dumps({"model": 7, "messages": user}).encode(),  # a model id that is not a string
        json.dumps({"model": model, "messages": "hi"}).encode(),
        json.dumps({"model": model, "messages": user, "max_tokens": -1}).encode(),
        json.dumps({"model": model, "messages": user, "n": 3}).encode(),
        json.dumps({"model": model, "messages": user, "stop": 5}).encode(),
        json.dumps({"model": model, "messages": [{"role": "wizard", "content": "x"}]}).encode(),
        json.dumps({"model": model, "messages": [{"role": "user", "content": "film " * 400}]}).encode(),  # > 256 positions
    ]
    for body in bad:
        status, reply = post(f"{url}/chat/completions", body)
        assert 400 <= status < 500 and reply["error"]["message"], (body[:80], status, reply)
    status, reply = post(f"{url}/completions", json.dumps({"model": model, "prompt": "film " * 400}).encode())
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"


def test_a_client_that_disconnects_mid_stream_frees_the_model(server):
    import http.client

    url, model, engine = server
    network = engine.model.get_base_model()  # what generate() calls, under the adapter
    forward, calls = network.forward, []

    def slow_forward(*args, **kwargs):  # 40 ms a token: 200 tokens would hold the model for 8 s
        calls.append(1)
        time.sleep(0.04)
        return forward(*args, **kwargs)

    network.forward = slow_forward
    try:
        host, port = url.removeprefix("http://").split("/")[0].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({
            "model": model, "messages": [{"role": "user", "content": "talk"}], "max_tokens": 200, "stream": True,
            "temperature": 0}), {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = conn.getresponse()
        response.fp.readline()  # the first event: generation has started
        deadline = time.time() + 30
        while len(calls) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 3
        conn.sock.close()  # the client goes away
        conn.close()
        assert engine.lock.acquire(timeout=5), "the generation still holds the model after the client left"
        engine.lock.release()
        stopped_at = len(calls)
        time.sleep(0.3)
        assert len(calls) == stopped_at < 100  # nothing generates for nobody
    finally:
        network.forward = forward
    # the next client is served at once
    reply = client(url).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_sixteen_concurrent_streaming_clients_all_complete(server):
    url, model, _ = server
    c = client(url)

    def stream(i):
        chunks = c.chat.completions.create(model=model, messages=[{"role": "user", "content": f"film {i}"}], max_tokens=5,
                                           temperature=0, stream=True)
        return "".join(ch.choices[0].delta.content or "" for ch in chunks)

    sequential = [stream(i) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(stream, range(16))) == sequential


# ---- evaluation reports and export -------------------------------------------------------------

def test_rouge_l_and_exact_match():
    from lmtune.eval.text_metrics import exact_match, rouge_l

    assert exact_match(" The  Cat ", "the cat") == 1.0 and exact_match("a cat", "the cat") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS of "the cat was on a mat" and "the cat sat on the mat" is "the cat on mat": 4 of 6 each way
    assert rouge_l("the cat was on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l("dog", "the cat") == 0.0


def test_sft_eval_writes_generations_beside_references(run_dir, tmp_path, capsys):
    from lmtune.cli import main

    data = write_jsonl(tmp_path / "v.jsonl", [{"instruction": f"Say {w}", "output": w} for w in ("yes", "no", "maybe")])
    assert main(["eval", str(run_dir), "--data", str(data), "--generations", str(tmp_path / "g.jsonl"),
                 "--max-new-tokens", "4", "--output", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    rows = [json.loads(l) for l in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert report["rows"] == 3 and report["generation"]["rows"] == 3 and {"loss", "perplexity"} <= set(report)
    assert [r["reference"] for r in rows] == ["yes", "no", "maybe"] and rows[0]["prompt"] == "Say yes"
    assert report["generation"]["rouge_l"] == pytest.approx(sum(r["rouge_l"] for r in rows) / 3)


def test_export_writes_a_self_contained_model_with_a_card(run_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.cli import main

    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "Base model" in card and "`lora`" in card and "alpaca_en_demo.json" in card
    assert (out / "generation_config.json").is_file() and list(out.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    _, adapter_model, _, _ = load_run_fp32(run_dir)
    ids = torch.tensor([tokenizer("a fine film", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        adapter_logits = adapter_model(input_ids=ids.to(next(adapter_model.parameters()).device)).logits.cpu()
        torch.testing.assert_close(model(input_ids=ids).logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert main(["export", str(run_dir), str(out)]) == 2  # never over an existing export


def load_run_fp32(run_dir):
    import torch

    from lmtune.loading import load_for_inference

    loaded = load_for_inference(run_dir, dtype=torch.float32)
    return loaded.cfg, loaded.model, loaded.tokenizer, loaded.precision


def test_adapters_on_one_base_share_it_and_answer_like_their_own_runs(run_dir, tmp_path, tiny_llama):
    other = tmp_path / "other"
    train(load_config(None, [
        f"model.name={tiny_llama}", f"data.train={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}",
        "data.format=instruction", "task.name=sft", "data.max_samples=16", "data.max_length=64", "train.lr=3e-2",
        "train.max_steps=3", "train.precision=fp32", "train.zero_shot_eval=false", f"output.dir={other}"]))
    engines = load_engines([str(run_dir), str(other)], base=str(tiny_llama))
    first, second = engines[run_dir.name], engines["other"]
    assert first.model is second.model and first.lock is second.lock  # one copy of the base
    assert engines[str(tiny_llama)].model is not first.model  # --base: its own plain model, id as given
    import torch

    ids = torch.tensor([first.prompt_ids([{"role": "user", "content": "hello there"}])])

    def run(model):
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.detach().cpu()

    def logits(engine):
        with engine.lock, torch.no_grad():
            engine._select()
            return run(engine.model)

    own_first, own_second = (run(load_engine(path)[1].model) for path in (run_dir, other))
    assert not torch.allclose(own_first, own_second, atol=1e-3)  # the two adapters really differ
    for engine, own in ((first, own_first), (second, own_second), (first, own_first)):  # switching back and forth
        torch.testing.assert_close(logits(engine), own, rtol=1e-5, atol=1e-5)
