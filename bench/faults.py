"""Faults a new user meets, run as that user would (the command line, on the demo config and the
real SmolLM2 model), with what lmtune did about each, as a table.

    .venv/bin/python bench/faults.py [--kills 8] [--model smollm2-135m-instruct] [--only NAME ...]

Every check runs `python -m lmtune ...` in its own process, in a fresh directory under a temporary
root, and passes when lmtune answers as docs/training.md says: a clean start, one located line
(exit 2) and nothing already written lost, a run that can be resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "rotten_tomatoes"
SMALL = ["data.max_samples=64", "data.max_eval_samples=32", "train.batch_size=8", "train.logging_steps=1",
         "train.zero_shot_eval=false"]


class Check:
    def __init__(self, root: Path, model: str):
        self.root, self.model = root, model
        self.config = ROOT / "configs" / "sentiment_lora.yaml"

    def lmtune(self, *args, timeout: float = 900, env=None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lmtune", *map(str, args)], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, env=env)

    def train(self, out: Path, *overrides, config=None) -> subprocess.CompletedProcess:
        return self.lmtune("train", config or self.config, "--output-dir", out, f"model.name={self.model}", *SMALL, *overrides)


def one_line(done: subprocess.CompletedProcess) -> bool:
    """Exit 2 and an error of one or two lines, no traceback."""
    err = done.stderr.strip().splitlines()
    errors = [line for line in err if line.startswith("lmtune: error:")]
    return done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr


def last_error(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("lmtune: error:")]
    return (lines[-1] if lines else done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")[:150]


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def overwrite(c: Check) -> tuple[bool, str]:
    out = c.root / "overwrite"
    c.train(out, "train.max_steps=4", "train.save_steps=1")
    c.train(out, "train.max_steps=2", "train.save_steps=1", "output.overwrite=true")
    log, ckpts = steps_logged(out), sorted(p.name for p in (out / "checkpoints").iterdir())
    resumed = c.train(out, "train.max_steps=3", "train.save_steps=1", "--resume")
    steps = json.loads((out / "metrics.json").read_text())["train"]["steps"]
    ok = log == [1, 2] and ckpts == ["checkpoint-1", "checkpoint-2"] and resumed.returncode == 0 and steps == 3
    return ok, f"log steps {log}, checkpoints {ckpts}; resume ended at step {steps}"


def damaged_weights(c: Check) -> tuple[bool, str]:
    out = c.root / "damaged"
    c.train(out, "train.max_steps=2")
    weights = out / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    results = {name: c.lmtune(*args) for name, args in (
        ("generate", ["generate", out, "a film"]), ("eval", ["eval", out]), ("merge", ["merge", out, c.root / "merged"]),
        ("export", ["export", out, c.root / "exported"]))}
    server = c.lmtune("serve", out, "--port", "1", timeout=300)  # fails while loading, before it binds
    results["serve"] = server
    ok = all(one_line(d) and "not a valid safetensors file" in d.stderr for d in results.values())
    return ok, f"{', '.join(results)}: {last_error(results['eval'])}"


def binary_config(c: Check) -> tuple[bool, str]:
    config = c.root / "binary.yaml"
    config.write_bytes(os.urandom(4096))
    done = c.lmtune("train", config)
    return one_line(done), last_error(done)


def byte_order_mark(c: Check) -> tuple[bool, str]:
    bom = c.root / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (DATA / "validation.jsonl").read_bytes())
    done = c.train(c.root / "bom-run", f"data.train={bom}", "train.max_steps=1")
    return done.returncode == 0, "trained on a UTF-8 file with a byte-order mark" if done.returncode == 0 else last_error(done)


def unwritable(c: Check) -> tuple[bool, str]:
    blocker = c.root / "a-file"
    blocker.write_text("x")
    done = c.train(blocker / "run", "train.max_steps=1")
    report = c.lmtune("eval", c.root / "overwrite", "--output", "/proc/report.json")
    return one_line(done) and one_line(report), f"{last_error(done)} | {last_error(report)}"


def failed_start(c: Check) -> tuple[bool, str]:
    out = c.root / "failed-start"
    bad = c.train(out, "train.max_steps=1", "task.label_words=[good, goodxyzq]")
    again = c.train(out, "train.max_steps=1")
    return one_line(bad) and again.returncode == 0, f"{last_error(bad)} | then the fixed command: exit {again.returncode}"


def empty_turn(c: Check) -> tuple[bool, str]:
    chat = c.root / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "hi"}]}) + "\n")
    done = c.lmtune("train", ROOT / "configs" / "chat_sft_lora.yaml", "--output-dir", c.root / "empty", f"data.train={chat}",
                    "data.validation=null", "data.on_bad_rows=error", f"model.name={c.model}")
    return one_line(done) and not (c.root / "empty").exists(), last_error(done)


def huge_row(c: Check) -> tuple[bool, str]:
    """One 50 MB review: it trains, at the memory of an ordinary run (the row is cut before tokenising)."""
    big = c.root / "huge.jsonl"
    words = ("a truly long review of a film " * 1_800_000)[:50_000_000]
    big.write_text(json.dumps({"text": words, "label": "positive"}) + "\n" + (DATA / "validation.jsonl").read_text())
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = c.train(c.root / "huge-run", f"data.train={big}", "data.max_samples=2000", "train.max_steps=2")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    seconds = time.perf_counter() - start
    data = json.loads((c.root / "huge-run" / "metrics.json").read_text())["data"]["train"] if done.returncode == 0 else {}
    ok = done.returncode == 0 and data.get("truncated", 0) >= 1 and peak < 4.5
    return ok, f"peak RSS {peak:.1f} GB (max over the runs so far: {before / 2**20:.1f} GB before), {seconds:.0f} s, {data.get('truncated')} row cut"


def server(c: Check) -> tuple[bool, str]:
    """16 streaming clients, one that leaves mid-stream, and bad bodies (4xx, never 500)."""
    import http.client
    import urllib.request

    run = c.root / "overwrite"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", str(run), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        model = run.name

        def post(body: bytes, stream_and_leave: bool = False):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            if stream_and_leave:
                response.fp.readline()
                conn.sock.close()
                return response.status, b""
            return response.status, response.read()

        start = time.perf_counter()
        post(json.dumps({"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}],
                         "max_tokens": 2000, "stream": True}).encode(), stream_and_leave=True)
        status, _ = post(json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode())
        freed = time.perf_counter() - start
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(post(json.dumps({
            "model": model, "messages": [{"role": "user", "content": f"film {i}"}], "max_tokens": 8, "stream": True}).encode())))
            for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        streamed = sum(s == 200 and b"[DONE]" in body for s, body in results)
        bad = [b"{not json", b"[]", json.dumps({"model": model, "messages": []}).encode(),
               json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}).encode(),
               json.dumps({"model": model, "messages": [{"role": "user", "content": "film " * 10000}]}).encode()]
        statuses = [post(body)[0] for body in bad]
        ok = status == 200 and freed < 30 and streamed == 16 and all(400 <= s < 500 for s in statuses)
        return ok, f"next client served {freed:.1f} s after one left a 2,000-token stream; {streamed}/16 streams done; bad bodies {statuses}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def kills(c: Check, trials: int) -> tuple[bool, str]:
    """kill -9 at random moments of a run that checkpoints every step, each time resumed; every
    checkpoint left must load and the last resume must finish."""
    out = c.root / "kills"
    rng = random.Random(0)
    overrides = ["train.max_steps=40", "train.save_steps=1", "train.save_total_limit=2"]
    command = [sys.executable, "-m", "lmtune", "train", str(c.config), "--output-dir", str(out), f"model.name={c.model}",
               *SMALL, *overrides]
    broken = 0
    for trial in range(trials):
        resume = ["--resume"] if (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("checkpoint-*")) else []
        proc = subprocess.Popen([*command, *resume], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(8, 25))  # model loading, tokenising, training, saving, rotating: anywhere
        proc.kill()
        proc.wait()
        for checkpoint in (out / "checkpoints").glob("checkpoint-*") if (out / "checkpoints").is_dir() else []:
            names = {p.name for p in checkpoint.iterdir()}
            if not {"trainer_state.json", "optimizer.pt", "adapter_model.safetensors"} <= names:
                broken += 1
    done = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    steps = json.loads((out / "metrics.json").read_text())["train"]["steps"] if done.returncode == 0 else None
    return broken == 0 and steps == 40, f"{trials} kills, {broken} broken checkpoints, the last resume ended at step {steps}"


# The 50 MB row first: its peak memory is read from the maximum over all the child processes so far.
CHECKS = {"50 MB row": huge_row, "overwrite": overwrite, "damaged weights": damaged_weights, "binary config": binary_config,
          "byte-order mark": byte_order_mark, "unwritable location": unwritable, "failed start": failed_start,
          "empty user turn": empty_turn, "server": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--only", nargs="*", help="run these checks only (names as in the table)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lmtune-faults-"))
    c = Check(root, args.model)
    rows = []
    names = args.only or [*CHECKS, "kill -9"]
    for name in names:
        start = time.perf_counter()
        try:
            ok, detail = kills(c, args.kills) if name == "kill -9" else CHECKS[name](c)
        except Exception as e:  # a check that crashes is a failed check, with why
            ok, detail = False, f"{type(e).__name__}: {e}"
        rows.append((name, "pass" if ok else "FAIL", f"{time.perf_counter() - start:.0f} s", re.sub(r"\s+", " ", detail)))
        print(f"{name}: {rows[-1][1]} ({rows[-1][2]}) {rows[-1][3]}", flush=True)
    print("\n| fault | result | time | what lmtune did |\n| --- | --- | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if all(r[1] == "pass" for r in rows) else 1)


if __name__ == "__main__":
    main()
