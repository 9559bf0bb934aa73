"""GRPO: prompts read with their fields, the reward functions (built-in and the user's own), group
advantages as TRL computes them, and a tiny model whose sampled answers earn more reward as it trains."""

import json
import math

import pytest
import torch

from lmtune.config import load_config
from lmtune.data.dataset import load_examples
from lmtune.errors import ConfigError
from lmtune.tasks.grpo import advantages, combine, nanstd
from lmtune.tasks.rewards import load_reward
from lmtune.training.run import train

from conftest import DATA, write_jsonl

SENTIMENT_PROMPTS = [f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}", "data.format=prompts",
                     "data.labels=[negative, positive]", "task.name=grpo", "task.rewards=[label_word]"]


def test_prompts_keep_their_fields_for_the_rewards(tmp_path):
    cfg = load_config(None, [*SENTIMENT_PROMPTS, "data.prompt=Review: {text}", "data.system_prompt=Be brief."])
    examples, _ = load_examples(str(DATA / "rotten_tomatoes" / "validation.jsonl"), cfg.data)
    first = examples[0]
    assert first["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert first["prompt"][1]["content"].startswith("Review: ") and first["fields"]["label"] in (0, 1)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}])
    examples, _ = load_examples(str(path), load_config(None, ["data.format=prompts", "task.name=grpo", "task.rewards=[number]"]).data)
    assert examples[0]["prompt"] == [{"role": "user", "content": "2+2?"}] and examples[0]["fields"] == {"answer": "4"}


def test_group_advantages_as_trl_computes_them():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    out = advantages(rewards, 4, "group")
    std = math.sqrt(sum((r - 0.5) ** 2 for r in (1, 0, 0, 1)) / 3)  # unbiased
    assert out[:4].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1 + [-0.5 / (std + 1e-4), 0.5 / (std + 1e-4)])
    assert out[4:].tolist() == [0.0] * 4  # a group whose answers all score the same teaches nothing
    assert advantages(rewards, 4, "none")[:4].tolist() == [0.5, -0.5, -0.5, 0.5]
    # A function that cannot score an answer (None) counts as 0 beside the others; NaN only when none could.
    table = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")], [0.0, 2.0]])
    combined = combine(table, torch.tensor([1.0, 0.5]))
    assert combined[0] == 1.0 and math.isnan(combined[1]) and combined[2] == 1.0
    assert nanstd(torch.tensor([1.0, float("nan"), 3.0])).item() == pytest.approx(math.sqrt(2))


def test_built_in_and_user_rewards(tmp_path):
    cfg = load_config(None, [*SENTIMENT_PROMPTS, "task.max_completion_length=10"])
    label_word = load_reward("label_word", cfg)
    assert label_word(prompts=[""] * 4, completions=["It is positive.", "Negative!", "positive or negative", "great"],
                      label=[1, 1, "negative", 0]) == [1.0, 0.0, 0.0, 0.0]
    number = load_reward("number", cfg)
    assert number(prompts=[""] * 3, completions=["so 1,234 apples", "5", "no idea"], answer=["... #### 1234", "6", "7"]) == [1.0, 0.0, 0.0]
    assert load_reward("brevity", cfg)(prompts=[""], completions=["x"], completion_ids=[[1, 2]]) == [pytest.approx(0.8)]
    mine = tmp_path / "my_rewards.py"
    mine.write_text("def shouting(prompts, completions, **fields):\n    return [float(c.isupper()) for c in completions]\n")
    assert load_reward(f"{mine}:shouting", cfg)(prompts=[""] * 2, completions=["HEY", "hey"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="has no function 'whisper'"):
        load_reward(f"{mine}:whisper", cfg)
    with pytest.raises(ConfigError, match="task grpo needs task.rewards"):
        load_config(None, ["task.name=grpo", "data.format=prompts"])
    with pytest.raises(ConfigError, match="neither a built-in reward"):
        load_config(None, ["task.name=grpo", "data.format=prompts", "task.rewards=[happiness]"])


def test_a_tiny_model_learns_what_its_reward_asks(tmp_path, tiny_llama):
    """The reward: the share of the letter e in the answer. The mean reward of the sampled answers
    rises as training goes on (0.09 to about 0.4 here), and is logged with the rest of the GRPO
    metrics. Full fine-tuning: a LoRA on a random 64-wide model moves too little in 24 steps."""
    rewards = tmp_path / "letters.py"
    rewards.write_text("def e_share(prompts, completions, **fields):\n"
                       "    return [c.count('e') / max(len(c), 1) for c in completions]\n")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something about film {i}."} for i in range(16)])
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", "task.name=grpo", "method.name=full", "data.format=prompts",
                             f"data.train={prompts}", f"task.rewards=[{rewards}:e_share]", "task.num_generations=6", "task.max_completion_length=12",
                             "data.max_length=48", "train.batch_size=4", "train.max_steps=24", "train.lr=1e-2",
                             "train.logging_steps=1", "train.precision=fp32", f"output.dir={out}", "train.seed=0"])
    train(cfg, reporters=[])
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert {"reward", "reward_std", "reward_e_share", "completion_length", "frac_reward_zero_std"} <= set(logged[0])
    first, last = [r["reward"] for r in logged[:6]], [r["reward"] for r in logged[-6:]]
    assert sum(last) / 6 > sum(first) / 6 + 0.1, (first, last)


def test_answers_sharing_their_prompt_give_the_loss_and_gradients_of_one_row_each(tmp_path, tiny_llama):
    """GRPO's step with each prompt computed once for its group equals the step with a row per
    answer: same sampled answers (same seed), same loss, same gradients."""
    from lmtune.data.examples import to_row
    from lmtune.loading import attach_reference, load_for_training

    rewards = tmp_path / "letters.py"
    rewards.write_text("def e_share(prompts, completions, **fields):\n"
                       "    return [c.count('e') / max(len(c), 1) for c in completions]\n")
    prompts = [{"prompt": f"Say something about film {i}.", "fields": {}} for i in range(3)]
    results = []
    for share in (True, False):
        cfg = load_config(None, [f"model.name={tiny_llama}", "task.name=grpo", "method.name=full", "data.format=prompts",
                                 f"task.rewards=[{rewards}:e_share]", "task.num_generations=5", "task.max_completion_length=8",
                                 "data.max_length=48", "train.precision=fp32", f"task.share_prompt={str(share).lower()}",
                                 "task.beta=0.1"])
        loaded = load_for_training(cfg)
        task, model = loaded.task, loaded.model
        attach_reference(loaded)
        assert task.share_prompt is share
        rows = [to_row({"prompt": [{"role": "user", "content": p["prompt"]}], "fields": p["fields"]}) for p in prompts]
        encoded = task.encode({k: [r[k] for r in rows] for k in rows[0]})
        batch = task.collator()([{"input_ids": ids, "fields": f} for ids, f in zip(encoded["input_ids"], encoded["fields"])])
        torch.manual_seed(0)
        model.train()
        loss, count = task.loss(model, batch)
        loss.backward()
        results.append((loss.detach(), count, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (shared, n1, grads1), (separate, n2, grads2) = results
    assert n1 == n2 == 15 and any(g.abs().sum() > 0 for g in grads1)
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads1, grads2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
