"""Training you can trust: resume gives the same weights, kills never leave a broken checkpoint,
SIGTERM saves and says how to resume, nan stops (or is skipped), early stopping, best checkpoint,
TensorBoard, plots, and two processes (torchrun, gloo) agreeing with one."""

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.errors import ConfigError
from lmtune.tasks.base import Task
from lmtune.training.checkpoint import CHECKPOINT, STAGING, is_complete, latest_checkpoint, rotate
from lmtune.training.run import train
from lmtune.training.trainer import NonFiniteLoss

from conftest import SENTIMENT

STEPS = ["train.batch_size=4", "train.lr=5e-3", "train.logging_steps=1", "train.precision=fp32", "train.zero_shot_eval=false"]


def adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("stop_at", [2, 6, 8])  # inside the first epoch, at its end, inside the second
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, tiny_llama, stop_at):
    # 24 rows / batch 4 = 6 steps an epoch; 10 steps cross into the second epoch. LoRA dropout makes
    # the result depend on the restored RNG state too, not only on the weights and the optimizer;
    # rows of different lengths batched by length (train.group_by_length) make it depend on the
    # order of each epoch's batches, which a resume inside the second epoch must draw again.
    common = [f"model.name={tiny_llama}", *SENTIMENT, *STEPS, "data.max_samples=24", "train.max_steps=10",
              "train.save_steps=2", "method.dropout=0.1"]
    whole = tmp_path / "whole"
    train(load_config(None, [*common, f"output.dir={whole}"]))
    # The interrupted run: what it had on disk when it stopped after step `stop_at`.
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoints" / f"checkpoint-{stop_at}", cut / "checkpoints" / f"checkpoint-{stop_at}")
    metrics = train(load_config(None, [*common, f"output.dir={cut}"]), resume="latest").metrics
    assert metrics["train"]["steps"] == 10 and metrics["train"]["resumed_from"].endswith(f"checkpoint-{stop_at}")
    assert_same_weights(adapter(whole), adapter(cut), atol=0)  # exactly: the same computation, step for step


@pytest.mark.parametrize("task", ["sft_packed", "seq_cls"])
def test_resume_inside_the_second_epoch_is_exact_for_packed_sft_and_a_head(tmp_path, tiny_llama, task):
    from conftest import ALPACA

    data = {"sft_packed": [*ALPACA, "data.packing=true", "data.max_samples=24"],
            "seq_cls": [*SENTIMENT, "task.name=seq_cls", "data.max_samples=24"]}[task]
    common = [f"model.name={tiny_llama}", *data, *STEPS, "train.max_steps=10", "train.save_steps=4", "method.dropout=0.1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(load_config(None, [*common, f"output.dir={whole}"]))
    # 24 rows / batch 4 = 6 steps an epoch (packing joins a batch's rows into one): checkpoint-8 is inside the second.
    shutil.copytree(whole / "checkpoints" / "checkpoint-8", cut / "checkpoints" / "checkpoint-8")
    train(load_config(None, [*common, f"output.dir={cut}"]), resume="latest")
    assert_same_weights(adapter(whole), adapter(cut), atol=0)


def lmtune_command(*args) -> list[str]:
    return [sys.executable, "-m", "lmtune", *map(str, args)]


def wait_for(predicate, timeout: float = 120.0, process=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the training process ended early: {process.communicate()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def logged_steps(out) -> list[int]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line]


def test_sigterm_saves_a_checkpoint_and_the_printed_command_resumes(tmp_path, tiny_llama):
    out = tmp_path / "run"
    overrides = [f"model.name={tiny_llama}", *SENTIMENT, *STEPS, "train.max_steps=200"]
    proc = subprocess.Popen(lmtune_command("train", write_config(tmp_path), "--output-dir", out, *overrides),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(logged_steps(out)) >= 3, process=proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    metrics = json.loads((out / "metrics.json").read_text())
    step = metrics["interrupted"]["step"]
    assert metrics["interrupted"]["signal"] == "SIGTERM" and 3 <= step < 200
    assert is_complete(out / "checkpoints" / f"checkpoint-{step}") and (out / "loss.png").is_file()
    resume = shlex.split(err.split("Resume with: ")[1].strip())
    assert resume[:2] == ["lmtune", "train"] and resume[-1] == "--resume"
    done = subprocess.run(lmtune_command(*resume[1:]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 200 and "interrupted" not in metrics
    assert logged_steps(out) == list(range(1, 201))  # the log goes on where the checkpoint was, no repeats


def write_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method:\n  name: lora\n")
    return path


def assert_loadable(checkpoint) -> None:
    """Everything resume reads from a checkpoint opens."""
    assert is_complete(checkpoint), checkpoint
    load_file(checkpoint / "adapter_model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.load(checkpoint / name, weights_only=False)
    json.loads((checkpoint / "trainer_state.json").read_text())


def test_kill_9_at_random_moments_never_leaves_a_checkpoint_resume_would_take_but_cannot_load(tmp_path, tiny_llama):
    out = tmp_path / "run"
    config = write_config(tmp_path)
    overrides = [f"model.name={tiny_llama}", *SENTIMENT, *STEPS, "train.max_steps=120", "train.save_steps=1",
                 "train.save_total_limit=3"]
    rng = random.Random(0)
    for trial in range(4):
        resume = ["--resume"] if latest_checkpoint(out / "checkpoints") else []
        before = latest_checkpoint(out / "checkpoints")
        proc = subprocess.Popen(lmtune_command("train", config, "--output-dir", out, *overrides, *resume),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: latest_checkpoint(out / "checkpoints") not in (None, before), process=proc)
        time.sleep(rng.uniform(0, 0.6))
        proc.kill()
        proc.wait()
        found = [p for p in (out / "checkpoints").iterdir() if CHECKPOINT.match(p.name)]
        assert found, f"trial {trial}: no checkpoint"
        for checkpoint in found:  # every directory that looks like a checkpoint is one
            assert_loadable(checkpoint)
    done = subprocess.run(lmtune_command("train", config, "--output-dir", out, *overrides, "--resume"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 120


def fake_checkpoints(root, steps):
    for step in steps:
        (root / f"checkpoint-{step}").mkdir(parents=True)
        for name in ("trainer_state.json", "optimizer.pt", "adapter_model.safetensors"):
            (root / f"checkpoint-{step}" / name).write_text("{}")


def test_rotation_keeps_the_newest_and_the_best_like_the_trainer(tmp_path):
    fake_checkpoints(tmp_path, [1, 2, 3, 4, 5])
    rotate(tmp_path, 2, str(tmp_path / "checkpoint-2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-5"]


def test_a_kill_during_rotation_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    # transformers' rotation removes checkpoint-N file by file: killed halfway, it left a directory
    # with trainer_state.json (so resume-able by name) and no optimizer. Ours renames it away first.
    fake_checkpoints(tmp_path, [1, 2, 3])
    real_rmtree = shutil.rmtree

    def killed_after_one_file(path, ignore_errors=False):
        files = sorted(p for p in path.iterdir()) if path.is_dir() else []
        if files:
            files[0].unlink()
            raise KeyboardInterrupt  # stands for the kill
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        rotate(tmp_path, 1, None)
    named = [p for p in tmp_path.iterdir() if CHECKPOINT.match(p.name)]
    assert sorted(p.name for p in named) == ["checkpoint-2", "checkpoint-3"]
    assert all(len(list(p.iterdir())) == 3 for p in named)  # each whole
    assert (tmp_path / STAGING / "retired-checkpoint-1").is_dir()  # the rest, out of resume's sight


def _wrap(loss, calls):
    """The task's loss, made nan on the third training batch."""
    def poisoned(self, model, inputs):
        value, count = loss(self, model, inputs)
        calls.append(1)
        return (value * float("nan"), count) if len(calls) == 3 else (value, count)

    return poisoned


def test_a_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, tiny_llama, monkeypatch):
    from lmtune.tasks.label_tokens import LabelTokensTask

    monkeypatch.setattr(LabelTokensTask, "loss", _wrap(LabelTokensTask.loss, []))
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS,
                             "train.max_steps=6", "train.save_steps=1"])
    with pytest.raises(NonFiniteLoss, match=r"became nan at step 3; the last good checkpoint is .*checkpoint-2"):
        train(cfg)
    assert_loadable(out / "checkpoints" / "checkpoint-2")
    assert not (out / "checkpoints" / "checkpoint-3").exists()
    assert all(torch.isfinite(t).all() for t in load_file(out / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").values())


def test_on_nan_skip_drops_the_bad_batch_and_finishes(tmp_path, tiny_llama, monkeypatch):
    from lmtune.tasks.label_tokens import LabelTokensTask

    monkeypatch.setattr(LabelTokensTask, "loss", _wrap(LabelTokensTask.loss, []))
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS,
                             "train.max_steps=6", "train.on_nan=skip"])
    metrics = train(cfg).metrics
    assert metrics["train"]["steps"] == 6 and metrics["train"]["skipped_nonfinite_batches"] == 1
    assert all(torch.isfinite(t).all() for t in adapter(out).values())


def test_early_stopping_ends_the_run_after_patience_evaluations_without_improvement(tmp_path, tiny_llama):
    out = tmp_path / "run"
    # A learning rate too small to move the loss by the threshold: no evaluation improves on the first.
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS, "train.lr=1e-9",
                             "train.max_steps=20", "train.eval_steps=1", "train.early_stopping_patience=2",
                             "train.early_stopping_threshold=0.01", "train.metric_for_best=accuracy"])
    metrics = train(cfg).metrics
    assert metrics["train"]["steps"] == 3
    assert metrics["best"]["metric"] == "accuracy"


def test_best_checkpoint_is_kept_and_loaded_at_the_end(tmp_path, tiny_llama):
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS, "train.max_steps=8",
                             "train.eval_steps=2", "train.save_steps=2", "train.save_total_limit=1",
                             "train.load_best_at_end=true"])
    metrics = train(cfg).metrics
    best = metrics["best"]
    assert best["metric"] == "loss" and best["loaded_at_end"]
    evals = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if '"eval_loss"' in l]
    best_step = min(evals, key=lambda r: r["eval_loss"])["step"]
    assert best["checkpoint"].endswith(f"checkpoint-{best_step}") and is_complete(out / "checkpoints" / f"checkpoint-{best_step}")
    assert not (out / "checkpoints" / ".staging").exists()
    # The saved adapter is the best checkpoint's.
    assert_same_weights(adapter(out), load_file(out / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors"), atol=0)


def test_tensorboard_and_loss_plots(tmp_path, tiny_llama, capsys):
    runs = []
    for lr in ("5e-3", "1e-3"):
        out = tmp_path / f"lr{lr}"
        train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS, "train.max_steps=4",
                                 f"train.lr={lr}", "train.eval_steps=2", "train.report_to=[tensorboard]"]))
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        assert (out / "loss.png").stat().st_size > 10_000
        runs.append(out)
    chart = tmp_path / "both.png"
    assert main(["plot", *map(str, runs), "--output", str(chart)]) == 0
    assert chart.stat().st_size > 10_000
    assert main(["plot", *map(str, runs), "--output", str(chart)]) == 2  # never written over
    assert main(["plot", str(tmp_path)]) == 2
    assert "no log.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["train.load_best_at_end=true", "train.eval_steps=2"], "save_steps to a multiple of train.eval_steps"),
    (["train.early_stopping_patience=2"], "set train.eval_steps"),
    (["train.metric_for_best=bleu", "train.eval_steps=2"], "reports accuracy, f1, loss, label_word_answers, not 'bleu'"),
    (["train.scheduler=cosnie"], "train.scheduler"),
])
def test_impossible_checkpoint_settings_are_refused_up_front(tmp_path, tiny_llama, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={tmp_path / 'run'}", *SENTIMENT, *STEPS, *overrides]))
    assert not (tmp_path / "run" / "adapter").exists()


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path, tiny_llama, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-5").mkdir(parents=True)  # half-written: no trainer_state.json
    assert main(["train", str(write_config(tmp_path)), "--output-dir", str(out), f"model.name={tiny_llama}", *SENTIMENT,
                 "--resume"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_again(tmp_path, tiny_llama, capsys):
    from lmtune.run_dir import INTERRUPTED, RunDir

    cfg = load_config(None, [f"model.name={tiny_llama}", *SENTIMENT, *STEPS, "train.max_steps=3", f"output.dir={tmp_path / 'run'}"])
    run = RunDir.create(cfg.output.dir, overwrite=False)  # what a kill during loading leaves: the config, no checkpoint
    run.write_config(cfg)
    run.set_status(INTERRUPTED, step=0)
    run.append_log({"step": 1, "loss": 9.9})
    metrics = train(cfg, resume="latest").metrics
    assert metrics["train"]["steps"] == 3 and metrics["train"]["resumed_from"] is None
    assert "stopped before its first checkpoint; starting it again from the beginning" in capsys.readouterr().out
    assert [r["loss"] for r in run.log() if "loss" in r and r["step"] == 1] != [9.9]  # the stale record is gone
    assert run.status().state == "finished"


def test_length_grouped_order_depends_on_the_seed_and_epoch_only():
    from lmtune.training.trainer import EpochSeededLengthGroupedSampler

    lengths = [5, 9, 3, 12, 7, 8, 2, 11] * 4
    sampler = EpochSeededLengthGroupedSampler(4, lengths=lengths, seed=0)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first)
    again = EpochSeededLengthGroupedSampler(4, lengths=lengths, seed=0)
    again.set_epoch(1)
    assert list(again) == second


FSDP = ["train.fsdp=full_shard auto_wrap",
        "train.fsdp_config={transformer_layer_cls_to_wrap: [LlamaDecoderLayer], use_orig_params: true}"]


@pytest.mark.parametrize("sharding", [[], FSDP], ids=["ddp", "fsdp"])
def test_two_processes_under_torchrun_agree_with_one_process_of_the_same_global_batch(tmp_path, tiny_llama, sharding):
    # Random order (no length grouping): the sampler then deals the same global batches to 1 or 2 processes.
    common = [f"model.name={tiny_llama}", *SENTIMENT, *STEPS, "train.max_steps=3", "train.group_by_length=false",
              "method.dropout=0"]
    config = write_config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(lmtune_command("train", config, "--output-dir", tmp_path / "one", *common),
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "lmtune", "train", str(config), "--output-dir", str(tmp_path / "two"), *common,
                          "train.batch_size=2", *sharding], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["train"]["steps"] == m2["train"]["steps"] == 3
    assert m1["train"]["samples"] == m2["train"]["samples"]
    assert_same_weights(adapter(tmp_path / "one"), adapter(tmp_path / "two"), atol=1e-5)


def test_a_classifier_no_better_than_its_most_common_label_is_called_out():
    from lmtune.training.learned import not_learned

    classes = [0] * 500 + [1] * 500  # two standard errors of a 0.5 share on 1,000 rows: 0.032
    steady = [{"step": s, "grad_norm": 4.0 + s % 3} for s in range(25, 250, 25)]
    spiked = steady[:2] + [{"step": 75, "grad_norm": 538.0}] + steady[3:]
    assert not_learned({"accuracy": 0.56}, classes, spiked) is None
    assert not_learned({"loss": 0.69}, classes, spiked) is None  # no accuracy: not a classifier's metrics
    said = not_learned({"accuracy": 0.5047}, classes, spiked)
    assert "no better than always answering the most common label (0.5000 of the 1,000 validation rows)" in said
    assert "gradient norm reached 538 at step 75 (median 5.0): lower train.lr" in said
    assert "train longer" in not_learned({"accuracy": 0.52}, classes, steady)
    assert not_learned({"accuracy": 0.80}, [0] * 900 + [1] * 100, steady) is not None  # below the majority's 0.9


def test_the_warning_is_printed_under_the_table_and_kept_in_metrics(tmp_path, tiny_llama, monkeypatch, capsys):
    from lmtune.tasks.label_tokens import LabelTokensTask

    evaluate = LabelTokensTask.evaluate
    monkeypatch.setattr(LabelTokensTask, "evaluate", lambda *a: {**evaluate(*a), "accuracy": 0.5})
    out = tmp_path / "run"
    train(load_config(None, [f"model.name={tiny_llama}", f"output.dir={out}", *SENTIMENT, *STEPS, "train.max_steps=2"]))
    warning = json.loads((out / "metrics.json").read_text())["warnings"][0]
    assert warning.startswith("fine-tuned accuracy 0.5000 is no better than always answering the most common label")
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.index("run directory:") < printed.index("warning: fine-tuned accuracy 0.5000")
