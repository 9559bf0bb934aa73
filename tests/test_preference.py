"""Preference tuning: pairs read from every shape (HH-RLHF transcripts included), the token ids of a
pair (one BOS, the answer's turn terminator trained), each loss against TRL's implementation and
against a hand computation, and DPO / ORPO / SimPO training tiny models until the chosen answers win."""

import json
import math
import os
import types

import pytest
import torch

from lmtune.config import load_config
from lmtune.data.dataset import load_examples
from lmtune.data.examples import to_row
from lmtune.data.tokenize import IGNORE
from lmtune.errors import ConfigError, DataError
from lmtune.loading import make_task
from lmtune.tasks.dpo import dpo_losses
from lmtune.tasks.orpo import odds_ratio_terms
from lmtune.tasks.simpo import simpo_losses
from lmtune.training.run import train

from conftest import DATA, write_jsonl

HH = DATA / "hh_rlhf_helpful" / "test_raw.jsonl"
PAIRS = [{"prompt": f"Is film {i} good?", "chosen": f"Yes, film {i} is a fine film.", "rejected": f"No. {i}"} for i in range(12)]


def data_cfg(*extra):
    return load_config(None, ["task.name=dpo", "data.format=preference", *extra]).data


def test_hh_rlhf_transcripts_split_at_their_shared_prefix(tmp_path):
    examples, skipped = load_examples(str(HH), data_cfg("data.on_bad_rows=skip"))
    assert len(examples) + skipped == 2354 and len(examples) > 2300
    first = examples[0]
    assert first["prompt"] == [{"role": "user", "content": "Do you know why turkeys became the official food of thanksgiving?"}]
    assert first["chosen"][0]["content"].startswith("To be honest") and first["rejected"][0]["content"].startswith("I know that")
    multi = next(ex for ex in examples if len(ex["prompt"]) > 1)
    assert multi["prompt"][0]["role"] == "user" and multi["prompt"][-1]["role"] == "user"
    assert all(m["role"] == "assistant" for ex in examples for m in ex["chosen"][:1] + ex["rejected"][:1])


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen and rejected are the same"),
    ({"prompt": "q", "chosen": "a"}, "field 'rejected' is missing"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "field 'chosen' is empty"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]}, "no prompt before the answers"),
])
def test_bad_pairs_are_located_errors(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [PAIRS[0], row])
    with pytest.raises(DataError, match=f"p.jsonl:2: .*{message}"):
        load_examples(str(path), data_cfg())


def encode(tokenizer, rows, *extra):
    cfg = load_config(None, ["task.name=dpo", "data.format=preference", *extra])
    task = make_task(cfg, tokenizer)
    from lmtune.data.formats import FORMATS

    examples = [to_row(FORMATS.get("preference")(r, f"r:{i}", cfg.data)) for i, r in enumerate(rows)]
    return task.encode({k: [e[k] for e in examples] for k in examples[0]})


def test_a_pair_has_one_bos_and_its_answer_terminator_trained(llama_tokenizer, gpt2_tokenizer):
    tok = llama_tokenizer
    out = encode(tok, [PAIRS[0]])
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = ids("<|im_start|>user\nIs film 0 good?<|im_end|>\n<|im_start|>assistant\n")
    assert out["input_ids"][0] == prompt + ids("Yes, film 0 is a fine film.<|im_end|>\n")
    assert out["labels"][0] == [IGNORE] * len(prompt) + ids("Yes, film 0 is a fine film.<|im_end|>\n")
    assert out["rejected_input_ids"][0][: len(prompt)] == prompt
    assert out["rejected_labels"][0] == [IGNORE] * len(prompt) + ids("No. 0<|im_end|>\n")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for key in ("labels", "rejected_labels"):
        assert [t for t in out[key][0] if t != IGNORE].count(im_end) == 1  # one end of turn, trained
    # A tokenizer without a chat template: the plain template, the answer ends with one EOS.
    out = encode(gpt2_tokenizer, [PAIRS[0]])
    eos, bos = gpt2_tokenizer.eos_token_id, gpt2_tokenizer.bos_token_id
    for key in ("labels", "rejected_labels"):
        targets = [t for t in out[key][0] if t != IGNORE]
        assert targets[-1] == eos and targets.count(eos) == 1
    prompt = [t for t, label in zip(out["input_ids"][0], out["labels"][0]) if label == IGNORE]
    assert prompt.count(bos) <= 1 and bos not in prompt[1:]  # at most one BOS, first (GPT-2's BOS is its EOS too)


def test_hand_computed_losses():
    d = torch.tensor([2.0])
    assert dpo_losses(d, 0.5, "sigmoid").item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert dpo_losses(d, 0.5, "hinge").item() == pytest.approx(0.0)
    assert dpo_losses(torch.tensor([0.5]), 0.5, "hinge").item() == pytest.approx(0.75)
    assert dpo_losses(d, 0.5, "ipo").item() == pytest.approx((2.0 - 1.0) ** 2)
    eps = 0.1
    robust = (-(1 - eps) * math.log(1 / (1 + math.exp(-1.0))) + eps * math.log(1 / (1 + math.exp(1.0)))) / (1 - 2 * eps)
    assert dpo_losses(d, 0.5, "robust", eps).item() == pytest.approx(robust)
    # SimPO: beta 2, gamma 0.5, average log-probs -1 and -2: -log sigma(2 * 1 - 0.5)
    assert simpo_losses(torch.tensor([-1.0]), torch.tensor([-2.0]), 2.0, 0.5).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-1.5))))
    # ORPO: log odds(p) = log p - log(1 - p); with average log-probs log 0.5 and log 0.25
    lw, ll = math.log(0.5), math.log(0.25)
    log_odds = (lw - math.log(0.5)) - (ll - math.log(0.75))
    assert odds_ratio_terms(torch.tensor([lw]), torch.tensor([ll])).item() == pytest.approx(
        math.log(1 / (1 + math.exp(-log_odds))), rel=1e-6)


# ---- the same numbers as TRL -----------------------------------------------------------------

def sequences(seed: int = 0, pairs: int = 4, length: int = 9):
    """Per-token log-probs of 2B rows (chosen, then rejected) with completions of varied length."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * pairs, length, dtype=torch.long)
    for row in range(2 * pairs):
        start = int(torch.randint(2, 5, (1,), generator=g))
        end = int(torch.randint(start + 1, length + 1, (1,), generator=g))
        mask[row, start:end] = 1
    token_logps = -torch.rand(2 * pairs, length - 1, generator=g) * 3 * mask[:, 1:]
    return token_logps, mask


@pytest.mark.parametrize("loss, eps", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)])
def test_dpo_losses_equal_trl(loss, eps):
    trl = pytest.importorskip("trl")
    from collections import defaultdict

    token_logps, mask = sequences()
    logps = token_logps.sum(1)
    ref = logps + torch.randn(len(logps), generator=torch.Generator().manual_seed(1))
    beta = 0.3
    ident = lambda x: x  # noqa: E731
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device=logps.device, gather=ident, gather_for_metrics=ident),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=0.5, loss_types=[loss], loss_weights=[1.0], beta=beta, label_smoothing=eps,
        use_weighting=False, args=types.SimpleNamespace(discopop_tau=0.05),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    zeros = torch.zeros_like(token_logps)
    out = types.SimpleNamespace(log_probs=token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    ref_chosen, ref_rejected = ref.chunk(2)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    expected = trl.DPOTrainer._compute_loss(fake, lambda **kw: out, inputs, return_outputs=False)

    chosen, rejected = logps.chunk(2)
    counts = mask.sum(1).float()  # tokens of each completion
    delta = (chosen - ref_chosen) - (rejected - ref_rejected)
    if loss == "ipo":
        nc, nr = counts.chunk(2)
        delta = (chosen - ref_chosen) / nc - (rejected - ref_rejected) / nr
    torch.testing.assert_close(dpo_losses(delta, beta, loss, eps).mean(), expected, atol=1e-5, rtol=1e-5)
    metrics = {k: v[-1] for k, v in fake._metrics["train"].items()}
    assert metrics["rewards/margins"] == pytest.approx((beta * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean().item(), abs=1e-5)


def test_simpo_and_orpo_terms_equal_trl(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    token_logps, mask = sequences(seed=2)
    counts = mask[:, 1:].sum(1).float()
    chosen_avg, rejected_avg = (token_logps.sum(1) / counts).chunk(2)
    device = types.SimpleNamespace(device=torch.device("cpu"))
    simpo_self = types.SimpleNamespace(alpha=0.0, loss_type="simpo", beta=2.0, label_smoothing=0.1, simpo_gamma=0.5,
                                       accelerator=device)
    losses, _, _ = CPOTrainer.cpo_loss(simpo_self, chosen_avg, rejected_avg)
    torch.testing.assert_close(simpo_losses(chosen_avg, rejected_avg, 2.0, 0.5, 0.1), losses, atol=1e-5, rtol=1e-5)
    orpo_self = types.SimpleNamespace(beta=0.1, accelerator=device)
    losses, *_ = ORPOTrainer.odds_ratio_loss(orpo_self, chosen_avg, rejected_avg)
    torch.testing.assert_close(0.1 * odds_ratio_terms(chosen_avg, rejected_avg), losses, atol=1e-5, rtol=1e-5)


def test_sequence_logps_are_trl_batch_logps(tiny_llama, llama_tokenizer):
    """lmtune's answer log-probs (LM head at the answer tokens only) equal TRL's from full logits."""
    monkey = pytest.importorskip("trl")  # noqa: F841
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    from transformers import AutoModelForCausalLM
    from trl.experimental.cpo import CPOTrainer

    from lmtune.tasks.preference import PairCollator, sequence_logps

    out = encode(llama_tokenizer, PAIRS[:3])
    rows = [{k: out[k][i] for k in out} for i in range(3)]
    batch = PairCollator(llama_tokenizer.pad_token_id)(rows)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(sums, CPOTrainer.get_batch_logps(logits, batch["labels"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sums / counts, CPOTrainer.get_batch_logps(logits, batch["labels"], average_log_prob=True),
                               atol=1e-5, rtol=1e-5)


# ---- training ----------------------------------------------------------------------------------

FAST = ["train.batch_size=4", "train.logging_steps=1", "train.precision=fp32", "data.max_length=48"]


@pytest.mark.parametrize("task, method, lr", [("dpo", "lora", 5e-3), ("dpo", "full", 1e-3), ("orpo", "lora", 5e-3),
                                              ("simpo", "lora", 5e-3)])
def test_training_makes_the_chosen_answers_win(tmp_path, tiny_llama, task, method, lr, capsys):
    from lmtune.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_llama}", f"method.name={method}", f"task.name={task}", "data.format=preference",
                             f"data.train={data}", f"data.validation={data}", f"output.dir={out}", "train.max_steps=12",
                             f"train.lr={lr}", *FAST])
    metrics = train(cfg, reporters=[]).metrics
    before, after = metrics["zero_shot"], metrics["final"]
    assert after["reward_accuracy"] > 0.75 and after["margin"] > before["margin"]
    if task == "dpo":
        assert before["reward_accuracy"] == 0.5 and before["margin"] == 0.0  # the model is its own reference
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert {"reward_accuracy", "margin", "chosen_logp", "rejected_logp"} <= set(logged[-1])
    assert main(["eval", str(out)]) == 0  # the reference is rebuilt from the run directory
    report = json.loads(capsys.readouterr().out)
    assert report["reward_accuracy"] == pytest.approx(after["reward_accuracy"])
    assert report["margin"] == pytest.approx(after["margin"], rel=1e-3, abs=1e-4)


def test_preference_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="task dpo needs data.format: preference"):
        load_config(None, ["task.name=dpo", "data.format=instruction"])
    with pytest.raises(ConfigError, match="predicts per row|packing"):
        load_config(None, ["task.name=dpo", "data.format=preference", "data.packing=true"])
    with pytest.raises(ConfigError, match="task.beta is for tasks"):
        load_config(None, ["task.name=sft", "task.beta=0.2"])


def test_kto_loss_equals_trl():
    trl = pytest.importorskip("trl")
    from collections import defaultdict

    from lmtune.tasks.kto import kto_losses

    token_logps, mask = sequences(seed=3, pairs=3)  # six answers
    n = token_logps.shape[0]
    g = torch.Generator().manual_seed(4)
    logps = token_logps.sum(1)
    ref = logps + torch.randn(n, generator=g)
    kl_logps, ref_kl = -torch.rand(n, generator=g) * 5, -torch.rand(n, generator=g) * 5
    good = torch.tensor([True, False, True, True, False, False])
    ident = lambda x: x  # noqa: E731
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device=logps.device, gather=ident, gather_for_metrics=ident),
        calculate_KL=True, precompute_ref_logps=True, aux_loss_enabled=False, loss_type="kto", beta=0.2,
        desirable_weight=1.5, undesirable_weight=0.7, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    fake._compute_kl_logps = lambda model, batch: kl_logps
    zeros = torch.zeros_like(token_logps)
    out = types.SimpleNamespace(log_probs=token_logps, entropy=zeros, mean_logits=zeros)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "label": good, "ref_logps": ref, "ref_KL_logps": ref_kl}
    expected = trl.KTOTrainer._compute_loss(fake, lambda **kw: out, inputs, return_outputs=False)
    kl = (kl_logps - ref_kl).mean().clamp(min=0)
    mine = kto_losses(logps - ref, good, kl, 0.2, 1.5, 0.7).mean()
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


def test_kto_trains_good_answers_up_and_bad_ones_down(tmp_path, tiny_llama):
    rows = [r for p in PAIRS for r in ({"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                                       {"prompt": p["prompt"], "completion": p["rejected"], "label": "false"})]
    data = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    cfg = load_config(None, [f"model.name={tiny_llama}", "task.name=kto", "data.format=unpaired", f"data.train={data}",
                             f"data.validation={data}", f"output.dir={tmp_path / 'run'}", "train.max_steps=12",
                             "train.lr=5e-3", *FAST])
    metrics = train(cfg, reporters=[]).metrics
    assert metrics["zero_shot"]["margin"] == 0.0 and metrics["final"]["margin"] > 0.05
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        load_config(None, ["task.name=kto", "data.format=unpaired", "train.batch_size=1"])


def test_the_planner_counts_pairs_the_reference_and_grpo_answers():
    from transformers import LlamaConfig

    from lmtune.plan.command import plan

    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000)
    common = ["train.batch_size=4", "data.max_length=128"]

    def planned(*overrides):
        return plan(load_config(None, [*common, *overrides]), config=config, throughput=1000, measure_rate=False)[0]

    sft = planned("method.name=full")
    dpo_lora = planned("task.name=dpo", "data.format=preference")
    dpo_full = planned("task.name=dpo", "data.format=preference", "method.name=full")
    assert dpo_full.memory.weights - sft.memory.weights == pytest.approx(dpo_full.total * 2)  # a frozen bf16 copy
    assert dpo_lora.memory.activations == pytest.approx(2 * planned().memory.activations)  # two sequences per pair
    grpo = planned("task.name=grpo", "data.format=prompts", "task.rewards=[brevity]", "task.num_generations=8")
    assert grpo.memory.activations == pytest.approx(8 * planned().memory.activations)


def test_the_planner_measures_pairs_with_their_prompt_once(tmp_path, llama_tokenizer):
    from lmtune.plan.command import data_stats

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    stats = {share: data_stats(load_config(None, ["task.name=dpo", "data.format=preference", f"data.train={data}",
                                                  f"task.share_prompt={share}", "train.batch_size=4"]), llama_tokenizer)
             for share in ("true", "false")}
    shared, separate = stats["true"], stats["false"]
    assert shared["targets"] == pytest.approx(2 * separate["targets"])  # both answers' targets in the one row
    assert separate["mean"] < shared["mean"] < 2 * separate["mean"]  # the prompt counted once, not twice


def test_precomputed_reference_logps_train_as_the_live_reference(tmp_path, tiny_llama):
    """task.precompute_reference: the same losses as running the reference every step, the
    log-probs cached on disk and read back, and no frozen copy of the model for full fine-tuning."""
    from lmtune.model.builtin import cache_root
    from lmtune.training.prepare import prepare

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)

    def config(method, precompute, out):
        return load_config(None, [f"model.name={tiny_llama}", f"method.name={method}", "task.name=dpo", "data.format=preference",
                                  f"data.train={data}", f"data.validation={data}", f"output.dir={out}", "train.max_steps=6",
                                  "train.lr=5e-3", f"task.precompute_reference={precompute}", "train.seed=0", *FAST])

    losses = {}
    for precompute in ("false", "true"):
        out = tmp_path / f"run-{precompute}"
        metrics = train(config("lora", precompute, out), reporters=[]).metrics
        losses[precompute] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
        assert metrics["final"]["reward_accuracy"] > 0.5
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4, abs=1e-6)
    cached = list((cache_root() / "reference_logps").glob("*.json"))
    assert cached
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    prepared = prepare(config("full", "true", tmp_path / "full"))
    assert prepared.task.reference is None and "reference_chosen_logp" in prepared.train_data.column_names
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp  # the tiny model's log-probs read back, not recomputed
