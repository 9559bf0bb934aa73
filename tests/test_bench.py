"""`lmtune bench`: the harness scores the model lmtune trained (adapter applied), not its base."""

import json

import pytest
import torch

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.errors import ConfigError
from lmtune.training.run import train

from conftest import DATA, FAST, SENTIMENT, write_jsonl

REQUESTS = [  # (context, continuation): one-token answers sharing a context, and longer ones
    ("<|im_start|>user\na gorgeous , witty film<|im_end|>\n<|im_start|>assistant\n", "positive"),
    ("<|im_start|>user\na gorgeous , witty film<|im_end|>\n<|im_start|>assistant\n", "negative"),
    ("the story may not be new , but", " the director makes it work"),
    ("an entertaining , colorful , action-filled crime story", " with an intimate heart ."),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama):
    out = tmp_path_factory.mktemp("bench") / "run"
    train(load_config(None, [f"model.name={tiny_llama}", *SENTIMENT, *FAST, "method.name=lora", "train.lr=2e-2",
                             "train.zero_shot_eval=false", f"output.dir={out}"]))
    return out


def loglikelihoods(source, lean: bool = True) -> torch.Tensor:
    from lm_eval.api.instance import Instance

    from lmtune.eval.harness_model import harness_model
    from lmtune.loading import load_for_inference

    loaded = load_for_inference(source, dtype=torch.float32)
    loaded.precision = "fp32"
    lm = harness_model(loaded, batch_size=3)
    if not lean:  # the harness's own loop, for comparison
        lm._loglikelihood_tokens = type(lm).__mro__[1]._loglikelihood_tokens.__get__(lm)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(REQUESTS)]
    return torch.tensor([score for score, _ in lm.loglikelihood(requests, disable_tqdm=True)])


def test_the_adapter_is_used_unmerged_and_equals_the_merged_model(run_dir, tmp_path, tiny_llama):
    merged = tmp_path / "merged"
    assert main(["merge", str(run_dir), str(merged)]) == 0
    tuned, merged_scores, base = loglikelihoods(run_dir), loglikelihoods(merged), loglikelihoods(str(tiny_llama))
    assert (tuned - base).abs().max() > 1e-2  # the harness really saw the adapter
    torch.testing.assert_close(tuned, merged_scores, rtol=1e-4, atol=1e-4)


def test_lean_loglikelihood_equals_the_harness_loop(run_dir):
    torch.testing.assert_close(loglikelihoods(run_dir), loglikelihoods(run_dir, lean=False), rtol=1e-4, atol=1e-4)


def test_bench_command_writes_the_table_the_report_and_the_run_results(run_dir, tmp_path, tiny_llama, capsys):
    data = tmp_path / "data" / "rotten_tomatoes"
    data.mkdir(parents=True)
    rows = (DATA / "rotten_tomatoes" / "test.jsonl").read_text().splitlines()[:12]
    write_jsonl(data / "test.jsonl", rows)
    write_jsonl(data / "train.jsonl", rows[:2])
    report_file = tmp_path / "report.json"
    assert main(["bench", str(run_dir), "--tasks", "rotten_tomatoes", "--data-dir", str(data.parent),
                 "--output", str(report_file)]) == 0
    out = capsys.readouterr().out
    assert "lmtune bench" in out and "rotten_tomatoes" in out
    report = json.loads(report_file.read_text())
    base, tuned = report["models"]
    assert base["source"] == str(tiny_llama) and tuned["model"] == run_dir.name  # the run's base comes first
    acc = tuned["tasks"]["rotten_tomatoes"]["metrics"]["acc"]
    assert report["differences"][run_dir.name]["rotten_tomatoes"]["acc"] == pytest.approx(
        acc - base["tasks"]["rotten_tomatoes"]["metrics"]["acc"])
    saved = json.loads((run_dir / "bench" / "rotten_tomatoes.json").read_text())
    assert saved["metrics"]["acc"] == acc and saved["samples"] == 12 and saved["chat_template"] is True
    # The same rows through `lmtune eval`: the same prompt and label words give the same accuracy.
    from lmtune.eval.evaluate import evaluate_run

    assert evaluate_run(run_dir, str(data / "test.jsonl"), max_generations=0)["accuracy"] == pytest.approx(acc)
    assert main(["bench", str(run_dir), "--tasks", "rotten_tomatoes", "--output", str(report_file)]) == 2  # kept


def test_bench_errors_name_the_task_and_what_to_do(tmp_path, tiny_llama):
    from lmtune.eval.bench import BenchOptions, run_bench

    with pytest.raises(ConfigError, match="reads .*mmlu/test.jsonl, which does not exist.*--data-dir"):
        run_bench([str(tiny_llama)], BenchOptions(["mmlu"], data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="unknown task no_such_task.*offline tasks are"):
        run_bench([str(tiny_llama)], BenchOptions(["no_such_task"]))
    with pytest.raises(ConfigError, match="neither an lmtune run"):
        run_bench([str(tmp_path)], BenchOptions(["rotten_tomatoes"]))


def test_bench_after_training_puts_the_scores_in_metrics_json(tmp_path, tiny_llama):
    out = tmp_path / "run"
    train(load_config(None, [f"model.name={tiny_llama}", *SENTIMENT, *FAST, "method.name=lora", "train.zero_shot_eval=false",
                             "train.bench_after=[rotten_tomatoes]", "train.bench_limit=4", f"output.dir={out}"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["bench"]["rotten_tomatoes"]["acc"] <= 1
    assert json.loads((out / "bench" / "rotten_tomatoes.json").read_text())["samples"] == 4
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError, match="unknown task mmlu_typo"):  # before any training step
        train(load_config(None, [f"model.name={tiny_llama}", *SENTIMENT, *FAST, "train.bench_after=[mmlu_typo]",
                                 f"output.dir={bad}"]))
    assert not (bad / "adapter").exists() and not (bad / "checkpoints").exists()
