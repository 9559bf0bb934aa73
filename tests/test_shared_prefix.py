"""A prompt computed once for all its answers gives every answer token the log-prob (and the
gradient) it has in a row of its own, on Llama and GPT-2, with sdpa and eager attention."""

import random

import pytest
import torch

from lmtune.data.tokenize import IGNORE
from lmtune.tasks.preference import PairCollator, sequence_logps
from lmtune.tasks.shared_prefix import SharedPrefixCollator, common_prefix, shared_prefix_logits


def pairs(vocab: int, seed: int = 0) -> list[dict]:
    """Pairs with prompts of different lengths, answers of different lengths, one pair whose two
    prompts differ after a few tokens (cut differently), one whose rows have no common start."""
    rng = random.Random(seed)
    rows = []
    for i, (prompt, chosen, rejected) in enumerate([(7, 4, 9), (3, 6, 2), (12, 1, 5), (5, 5, 5), (6, 3, 4)]):
        shared = [rng.randrange(vocab) for _ in range(prompt)]
        c_prompt, r_prompt = list(shared), list(shared)
        if i == 3:
            r_prompt[3:] = [rng.randrange(vocab) for _ in range(prompt - 3)]
        if i == 4:
            r_prompt[0] = (c_prompt[0] + 1) % vocab
        c = [rng.randrange(vocab) for _ in range(chosen)]
        r = [rng.randrange(vocab) for _ in range(rejected)]
        rows.append({"input_ids": c_prompt + c, "labels": [IGNORE] * prompt + c,
                     "rejected_input_ids": r_prompt + r, "rejected_labels": [IGNORE] * prompt + r})
    return rows


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_shared_prompt_gives_each_answer_its_own_log_probs_and_gradients(family, attention, tiny_llama, tiny_gpt2):
    from transformers import AutoModelForCausalLM

    path = tiny_llama if family == "llama" else tiny_gpt2
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention)
    rows = pairs(model.config.vocab_size)
    shared_batch = PairCollator(0, share_prompt=True)(rows)
    separate_batch = PairCollator(0, share_prompt=False)(rows)
    assert shared_batch["input_ids"].numel() < separate_batch["input_ids"].numel()

    results = []
    for batch in (shared_batch, separate_batch):
        model.zero_grad()
        sums, counts = sequence_logps(model, batch)
        (sums * torch.linspace(0.5, 1.5, len(sums))).sum().backward()  # a different weight per answer
        results.append((sums.detach(), counts, [p.grad.clone() for p in model.parameters()]))
    (shared, shared_counts, shared_grads), (separate, separate_counts, separate_grads) = results
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=1e-5)
    assert shared_counts.tolist() == separate_counts.tolist()
    for a, b in zip(shared_grads, separate_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_layout_of_a_group():
    """Prompt [5, 6, 7] and answers [8, 9] / [10]: one row, the second answer's positions continuing
    from the prompt, blind to the first answer, its first token predicted from the prompt's end."""
    group = [([5, 6, 7, 8, 9], [IGNORE, IGNORE, IGNORE, 8, 9]), ([5, 6, 7, 10], [IGNORE, IGNORE, IGNORE, 10])]
    assert common_prefix(group) == 3
    batch = SharedPrefixCollator(0)([group])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3]]
    assert batch["shared_mask"][0, 0, 5].tolist() == [True, True, True, False, False, True]
    assert batch["attention_mask"].tolist() == [[1] * 6]  # what the Trainer counts tokens from
    assert batch["target_at"].tolist() == [2, 3, 2] and batch["target_id"].tolist() == [8, 9, 10]
    assert batch["target_answer"].tolist() == [0, 0, 1] and int(batch["answers"]) == 2


def test_a_group_of_many_answers_as_grpo_has_them(tiny_llama):
    """Eight answers to one prompt in one row: each answer's tokens score as in their own row."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    rng = random.Random(1)
    prompt = [rng.randrange(100) for _ in range(10)]
    answers = [[rng.randrange(100) for _ in range(rng.randint(1, 6))] for _ in range(8)]
    group = [(prompt + a, [IGNORE] * len(prompt) + a) for a in answers]
    with torch.no_grad():
        logits, targets, answer_of = shared_prefix_logits(model, SharedPrefixCollator(0)([group]))
        shared = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
        for i, (ids, _) in enumerate(group):
            alone = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, len(prompt) - 1:-1].float(), -1)
            own = alone.gather(1, torch.tensor(answers[i])[:, None]).squeeze(1)
            torch.testing.assert_close(shared[answer_of == i], own, atol=1e-5, rtol=1e-5)
