"""The run directory and the events of a run: overwrite starts clean, a run that fails says why,
a stop request from another thread saves and stops, a killed run reads as interrupted, and the
Python API drives the same path as the command line."""

import json
import os
import shutil
import threading

import pytest

import lmtune
from lmtune.config import load_config
from lmtune.errors import ConfigError
from lmtune.run_dir import FAILED, FINISHED, INTERRUPTED, RUNNING, RunDir
from lmtune.tasks.label_tokens import LabelTokensTask
from lmtune.training.interrupt import RunInterrupted, StopRequest
from lmtune.training.run import train

from conftest import SENTIMENT

STEPS = ["train.batch_size=4", "train.lr=5e-3", "train.logging_steps=1", "train.precision=fp32", "train.zero_shot_eval=false"]


def config(tiny_llama, out, *extra):
    return load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS, *extra])


def events(out) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_a_run_reports_its_events_in_order(tmp_path, tiny_llama):
    out = tmp_path / "run"

    class StatusWatcher:  # what `lmtune runs` reads while the run goes on
        statuses = []

        def emit(self, event):
            if event["event"] == "step":
                status = RunDir(out).status()
                self.statuses.append((status.state, status.step))

    train(config(tiny_llama, out, "train.max_steps=4", "train.save_steps=2"), reporters=[StatusWatcher()])
    assert StatusWatcher.statuses == [("running", 1), ("running", 2), ("running", 3), ("running", 4)]
    seen = events(out)
    kinds = [e["event"] for e in seen]
    assert kinds[:2] == ["started", "data"] and kinds[-1] == "finished"
    assert [e["step"] for e in seen if e["event"] == "step"] == [1, 2, 3, 4]
    assert [e["step"] for e in seen if e["event"] == "checkpoint"] == [2, 4]
    assert kinds.index("model") < kinds.index("step") < kinds.index("finished")
    final = [e for e in seen if e["event"] == "evaluated" and e["when"] == "final"][0]
    assert set(final["metrics"]) == {"accuracy", "f1", "loss", "label_word_answers"}
    step = [e for e in seen if e["event"] == "step"][-1]
    assert step["max_steps"] == 4 and step["tokens_per_s"] > 0 and step["loss"] > 0
    assert seen[-1]["metrics"]["train"]["steps"] == 4
    status = RunDir(out).status()
    assert status.state == FINISHED and status.step == 4 and status.error is None


def test_overwrite_starts_clean_and_resume_continues_the_new_run(tmp_path, tiny_llama):
    out = tmp_path / "run"
    train(config(tiny_llama, out, "train.max_steps=4", "train.save_steps=1"), reporters=[])
    first_id = RunDir(out).status().run_id
    with pytest.raises(ConfigError, match="is not empty"):
        train(config(tiny_llama, out, "train.max_steps=2"), reporters=[])
    train(config(tiny_llama, out, "train.max_steps=2", "train.save_steps=1", "output.overwrite=true"), reporters=[])
    run = RunDir(out)
    assert [r["step"] for r in run.log() if "loss" in r] == [1, 2]  # not 1, 2, 3, 4, 1, 2
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert [e["event"] for e in run.events()].count("started") == 1
    assert run.status().run_id != first_id
    assert not [p for p in tmp_path.iterdir() if p.name != "run"]  # the old run is gone, not parked beside it
    result = train(config(tiny_llama, out, "train.max_steps=3", "train.save_steps=1"), resume="latest", reporters=[])
    assert result.metrics["train"]["steps"] == 3 and result.metrics["train"]["resumed_from"].endswith("checkpoint-2")


def test_overwrite_never_removes_a_directory_lmtune_did_not_write(tmp_path, tiny_llama):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="lmtune did not write"):
        train(config(tiny_llama, out, "train.max_steps=1", "output.overwrite=true"), reporters=[])
    assert (out / "thesis.tex").read_text() == "years of work"


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, tiny_llama):
    a = tmp_path / "a"
    train(config(tiny_llama, a, "train.max_steps=2", "train.save_steps=2", "method.r=4"), reporters=[])
    b = tmp_path / "b"
    shutil.copytree(a / "checkpoints", b / "checkpoints")
    with pytest.raises(ConfigError, match=r"other settings \(method.r\)"):
        train(config(tiny_llama, b, "train.max_steps=3", "method.r=8"), resume="latest", reporters=[])
    # A longer run of the same settings is what resume is for: allowed, and the change is named.
    said = []
    train(config(tiny_llama, b, "train.max_steps=3", "train.save_steps=2", "method.r=4"), resume="latest",
          reporters=[type("R", (), {"emit": lambda self, e: said.append(e)})()])
    assert said[0]["event"] == "started" and said[0]["changed"] == ["train.max_steps"]


def _failing(calls):
    def loss(self, model, inputs):
        calls.append(1)
        raise RuntimeError("the loss exploded in a way no user caused")

    return loss


def test_a_run_that_fails_writes_a_failed_event_with_the_error(tmp_path, tiny_llama, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(LabelTokensTask, "loss", _failing([]))
    with pytest.raises(RuntimeError, match="exploded"):
        train(config(tiny_llama, out, "train.max_steps=2"), reporters=[])
    last = events(out)[-1]
    assert last["event"] == "failed" and "exploded" in last["error"] and last["error_type"] == "RuntimeError"
    assert "Traceback" in last["traceback"]  # not the user's error: the whole story for a bug report
    status = RunDir(out).status()
    assert status.state == FAILED and "exploded" in status.error


def test_a_failure_before_the_first_step_leaves_a_directory_the_fixed_command_reuses(tmp_path, tiny_llama):
    out = tmp_path / "run"
    bad = config(tiny_llama, out, "train.max_steps=1", "task.label_words=[good, goody]")  # same first token
    with pytest.raises(ConfigError, match="start with the same token"):
        train(bad, reporters=[])
    assert RunDir(out).status().state == FAILED and events(out)[-1]["traceback"] is None  # a user error: one line
    train(config(tiny_llama, out, "train.max_steps=1"), reporters=[])  # no "not empty", no overwrite needed
    assert RunDir(out).status().state == FINISHED


def test_bad_data_is_found_before_the_run_directory_is_made(tmp_path, tiny_llama):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 0}\n{"text": "no label"}\n')
    out = tmp_path / "run"
    with pytest.raises(Exception, match="bad.jsonl:2"):
        train(config(tiny_llama, out, f"data.train={bad}"), reporters=[])
    assert not out.exists()


def test_a_stop_request_from_another_thread_saves_and_stops(tmp_path, tiny_llama):
    out = tmp_path / "run"
    stop = StopRequest()

    class StopAtStep2:
        def emit(self, event):
            if event["event"] == "step" and event["step"] == 2:
                threading.Thread(target=stop.request, args=("the web UI",)).start()

    with pytest.raises(RunInterrupted) as info:
        train(config(tiny_llama, out, "train.max_steps=50"), reporters=[StopAtStep2()], stop=stop)
    step = info.value.step
    assert 2 <= step < 50 and (out / "checkpoints" / f"checkpoint-{step}").is_dir()
    assert RunDir(out).status().state == INTERRUPTED
    last = events(out)[-1]
    assert last["event"] == "interrupted" and last["reason"] == "the web UI" and last["step"] == step
    with pytest.raises(ConfigError, match=rf"stopped at step {step}, before its final weights; finish it with: "
                                          rf"lmtune train {out}/config.yaml --output-dir {out} --resume"):
        RunDir(out).check_weights()  # what `lmtune eval` and `generate` say of it


def test_a_run_without_weights_says_why(tmp_path):
    run = RunDir.create(tmp_path / "run", overwrite=False)
    run.write_config(load_config(None))
    run.set_status(RUNNING, step=3)  # this process: alive
    with pytest.raises(ConfigError, match=r"still training \(step 3\); its weights are saved when it ends"):
        run.check_weights()
    run.set_status(FAILED, step=5, error="out of memory\ntraceback ...")
    with pytest.raises(ConfigError, match=r"failed at step 5 \(out of memory\), before saving weights$"):
        run.check_weights()


def test_a_run_whose_process_died_reads_as_interrupted(tmp_path):
    run = RunDir.create(tmp_path / "run", overwrite=False)
    run.write_config(load_config(None))
    run.set_status(RUNNING, step=7)
    status = json.loads((run.path / "status.json").read_text())
    status["pid"] = 2**22 + 12345  # no such process
    (run.path / "status.json").write_text(json.dumps(status))
    assert run.status().state == INTERRUPTED and run.status().step == 7
    os.kill(os.getpid(), 0)  # (this process is alive; a status naming it would read as running)


def test_the_python_api_trains_and_opens_runs_like_the_cli(tmp_path, tiny_llama, capsys):
    out = tmp_path / "runs" / "one"
    result = lmtune.train(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS, "train.max_steps=2"],
                          reporters=[])
    assert capsys.readouterr().out == ""  # reporters=[]: events go to events.jsonl only
    run = lmtune.open_run(result.out)
    assert run.status().state == FINISHED and run.metrics()["train"]["steps"] == 2
    assert lmtune.evaluate(run)["accuracy"] == pytest.approx(run.metrics()["final"]["accuracy"])
    listed = lmtune.runs(tmp_path / "runs")
    assert [r["name"] for r in listed] == ["one"] and listed[0]["state"] == FINISHED and listed[0]["task"] == "label_tokens"


def test_lmtune_config_lists_every_key_from_the_typed_sections(capsys):
    from lmtune.cli import main

    assert main(["config", "train"]) == 0
    text = capsys.readouterr().out
    assert "train.lr: float = 0.0002" in text and "train.gradient_checkpointing: bool = false" in text
    assert main(["config", "task"]) == 0
    text = capsys.readouterr().out
    assert "task.name: token_cls" in text and "task.crf: bool = false" in text
    assert main(["config", "nonsense"]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "method.lora_plus_ratio" in capsys.readouterr().out


def test_the_command_line_answers_help_runs_and_config_without_the_training_stack(tmp_path):
    """`lmtune --help` imports no torch, `lmtune runs` and `lmtune config` no transformers or peft,
    nor does `lmtune train` that stops at a bad row, `lmtune plan` at a mistyped key or `lmtune eval` at
    a path that is not a run: the seconds those take are paid by the
    commands that load a model."""
    import subprocess
    import sys

    probe = ("import sys, contextlib, io\nfrom lmtune.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "a fine film", "label": 1}\n')
    loaded = {args[0]: subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True).stdout.strip()
              for args in (["--help"], ["runs", str(tmp_path)], ["config", "train"],
                           ["train", f"data.train={bad}", "data.format=classification", "data.labels=[no, yes]",
                            "task.name=label_tokens", f"output.dir={tmp_path / 'run'}"], ["plan", "train.batch_sizee=3"],
                           ["eval", str(tmp_path / "no-such-run")])}
    # a bad row is reported before the training stack loads, and no run directory is made
    assert loaded == {"--help": "[]", "runs": "['torch']", "config": "['torch']", "train": "['torch']",
                      "plan": "['torch']", "eval": "['torch']"}
    assert not (tmp_path / "run").exists()
