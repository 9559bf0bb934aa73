"""`lmtune plan`: parameters, memory and time from the config alone, for tiny and huge models."""

import time

import pytest
from rich.console import Console
from transformers import LlamaConfig

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.plan.command import plan
from lmtune.plan.estimate import GB, NF4_BYTES, Batch, flops_per_step
from lmtune.plan.shape import model_shape

from conftest import SENTIMENT

LLAMA3 = {  # Llama-3 8B and 70B shapes (published configs)
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


@pytest.mark.parametrize("size, billions", [("8b", 8.03), ("70b", 70.55)])
def test_huge_configs_are_planned_in_seconds_and_match_the_rules_of_thumb(size, billions):
    config = LlamaConfig(**LLAMA3[size])
    start = time.perf_counter()
    lora, qlora = (plan(load_config(None, [f"method.name={m}", "train.batch_size=1", "data.max_length=512"]),
                        config=config, throughput=100_000, measure_rate=False)[0] for m in ("lora", "qlora"))
    assert time.perf_counter() - start < 60
    assert lora.total / 1e9 == pytest.approx(billions, rel=0.01)
    # 16-bit LoRA: about 2 bytes per parameter for the weights.
    assert 2.0 <= lora.memory.weights / lora.total <= 2.05
    # QLoRA: about half a byte per parameter for the 4-bit blocks; the embeddings and LM head stay 16-bit.
    shape = model_shape(config)
    assert 0.5 <= NF4_BYTES[True] <= 0.6
    per_param = qlora.memory.weights / qlora.total
    assert 0.5 <= per_param <= (0.6 if size == "70b" else 0.75), per_param
    assert qlora.memory.weights < lora.memory.weights / 2.5
    assert lora.trainable == qlora.trainable > 0 and shape.layers == LLAMA3[size]["num_hidden_layers"]


def test_compare_orders_methods_by_what_they_train_and_hold(tiny_llama, capsys):
    cfg = load_config(None, [f"model.name={tiny_llama}", *SENTIMENT, "train.batch_size=4"])
    plans = {p.method: p for p in plan(cfg, compare=True, throughput=10)}
    assert set(plans) >= {"full", "lora", "qlora", "prompt_tuning", "prefix_tuning"}
    assert plans["full"].trainable == plans["full"].total
    assert plans["lora"].trainable < plans["full"].trainable
    assert plans["full"].memory.optimizer == plans["full"].trainable * 8  # two AdamW moments in fp32
    static = lambda m: m.weights + m.gradients + m.optimizer  # noqa: E731
    assert static(plans["full"].memory) > 3 * static(plans["lora"].memory)
    # LoRA keeps each adapted layer's input again (and a dropout mask): more activation memory than full.
    assert plans["lora"].memory.activations > plans["full"].memory.activations
    for p in plans.values():
        assert p.memory_checkpointed.activations <= p.memory.activations
        assert p.steps_per_epoch == 16 and p.seconds_per_epoch > 0  # 64 rows / batch 4
    out = capsys.readouterr().out
    assert "prompt_tuning" in out and "time / epoch" in out


def test_plan_without_a_config_and_advice_when_it_does_not_fit(tmp_path, capsys, monkeypatch):
    import lmtune.plan.command as command

    monkeypatch.setattr(command, "available_memory", lambda device: (1 * GB, "available RAM"))
    config = tmp_path / "config.json"
    config.write_text(LlamaConfig(**LLAMA3["8b"]).to_json_string())
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", lambda *a, **k: LlamaConfig(**LLAMA3["8b"]))
    monkeypatch.setattr("lmtune.model.load.resolve_model_path", lambda cfg: str(tmp_path))
    monkeypatch.setattr("lmtune.model.load.load_tokenizer", lambda path, cfg: None)
    assert main(["plan", "--model", "llama-3-8b", "--method", "full", "--batch-size", "8", "--max-length", "1024",
                 "--throughput", "1000"]) == 0
    out = capsys.readouterr().out
    assert "does not fit" in out and "nothing short of a larger machine" in out


def test_padded_length_replays_the_trainers_batches():
    from lmtune.plan.batching import padded_length

    lengths = [10, 100] * 200
    assert padded_length(lengths, 1, grouped=False, seed=0) == 55  # one row per batch: no padding
    assert padded_length([7] * 40, 4, grouped=True, seed=0) == 7
    random = padded_length(lengths, 8, grouped=False, seed=0)
    grouped = padded_length(lengths, 8, grouped=True, seed=0)
    assert random > 99  # eight rows drawn at random: almost always one of 100 tokens
    assert grouped < 60  # mega-batches sorted by length: at most one batch in each mixes the two lengths
    assert padded_length(lengths[:12], 4, grouped=True, seed=0) > 55  # too few rows for mega-batches


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "prompt_tuning"])
def test_the_step_is_timed_on_the_real_method(tiny_llama, method):
    """One block with the method applied (QLoRA through bitsandbytes' 4-bit layers) and the head at the
    real vocabulary, each timed; their sum over the depth is the step the plan multiplies."""
    from lmtune.plan import throughput
    from lmtune.plan.estimate import Batch

    cfg = load_config(None, [f"model.name={tiny_llama}", *SENTIMENT, f"method.name={method}"])
    built = []
    real_model = throughput._model
    throughput._model = lambda *a, **k: built.append(real_model(*a, **k)) or built[-1]
    try:
        from transformers import AutoConfig

        rate = throughput.measure(AutoConfig.from_pretrained(tiny_llama), cfg, Batch(2, 16, 12, 3), "bf16", seconds=0.05)
    finally:
        throughput._model = real_model
    block, rest = built
    assert rate.step_s > 0 and rate.flops_per_s > 0 and rate.optimizer_s_per_param > 0
    assert block.config.num_hidden_layers == 1 and rest.config.num_hidden_layers == 0
    assert rest.config.vocab_size == AutoConfig.from_pretrained(tiny_llama).vocab_size
    kinds = {type(m).__name__ for m in block.modules()}
    assert ("Linear4bit" in kinds) == (method == "qlora")
    trains = {n for n, p in block.named_parameters() if p.requires_grad}
    assert {"full": len(trains) == len(list(block.parameters())), "prompt_tuning": not trains}.get(
        method, bool(trains) and all("lora_" in n for n in trains))


def test_the_plan_counts_padding(tmp_path, tiny_llama):
    """Rows of very different lengths in random batches are computed at the longest row of each."""
    from conftest import write_jsonl

    from lmtune.model.load import load_tokenizer
    from lmtune.plan.command import batch_of, data_stats

    rows = [{"text": "word " * (2 if i % 2 else 50), "label": "positive"} for i in range(400)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    base = [f"model.name={tiny_llama}", *SENTIMENT, f"data.train={path}", "data.validation=null",
            "data.max_samples=null", "train.batch_size=8"]

    tokenizer = load_tokenizer(str(tiny_llama), load_config(None, base).model)
    stats = {g: data_stats(load_config(None, [*base, f"train.group_by_length={g}"]), tokenizer) for g in (False, True)}
    assert stats[False]["padded"] > 1.5 * stats[False]["mean"]
    assert stats[True]["padded"] < stats[False]["padded"]
    assert batch_of(load_config(None, base), stats[False]).computed_length == stats[False]["padded"]
    console = Console(record=True, width=400)
    plan(load_config(None, [*base, "train.group_by_length=false"]), throughput=10, tokenizer=tokenizer, console=console)
    said = f"computed at {stats[False]['padded']:.0f} per row (padding included, batches in random order"
    text = console.export_text()
    assert said in text
    # that much padding (rows of 3 and 51 tokens in random batches): packing is suggested, not when grouped
    assert f"padding makes each row computed at {stats[False]['padded'] / stats[False]['mean']:.2f}x" in text
    from lmtune.plan.report import packing_tip

    random_order = load_config(None, [*base, "train.group_by_length=false"])
    assert packing_tip(random_order, {**stats[False], "padded": 1.1 * stats[False]["mean"]}) is None  # little padding
    assert packing_tip(load_config(None, [*base, "data.packing=true"]), stats[False]) is None
    assert packing_tip(load_config(None, [*base, "method.name=prompt_tuning"]), stats[False]) is None


def test_plan_says_when_other_processes_took_the_cpus_while_it_timed():
    import subprocess
    import sys
    import time

    from lmtune.plan.busy import busy_warning, other_load

    def spin(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            time.sleep(0.02)

    with other_load() as quiet:
        spin(0.5)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core taken by another process
    try:
        time.sleep(0.5)
        with other_load() as busy:
            spin(1.0)
    finally:
        hog.kill()
    assert busy.others is not None and busy.others > 0.3 and busy.others > quiet.others
    assert "run lmtune plan again when the machine is quiet" in busy_warning(busy.others)
    assert busy_warning(0.05) is None and busy_warning(None) is None


def test_the_plan_counts_a_batchs_common_prompt_once(tmp_path, tiny_llama):
    """Without dropout the batches' common prompt is computed once (tasks/prompt_once.py): the plan
    replays the batches and counts it once per batch; with LoRA dropout, once per row."""
    from conftest import write_jsonl

    from lmtune.model.load import load_tokenizer
    from lmtune.plan.command import data_stats
    from lmtune.tasks.prompt_once import MIN_SAVED_TOKENS

    rows = [{"text": f"{i % 10} word", "label": "positive"} for i in range(64)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    base = [f"model.name={tiny_llama}", *SENTIMENT, f"data.train={path}", "data.validation=null", "train.batch_size=8",
            "data.max_length=256", "data.system_prompt=" + "a long instruction " * 8]
    tokenizer = load_tokenizer(str(tiny_llama), load_config(None, base).model)
    per_row, once = (data_stats(load_config(None, [*base, f"method.dropout={p}"]), tokenizer) for p in (0.1, 0.0))
    assert per_row["padded"] == per_row["mean"]  # rows of one length
    saved = per_row["padded"] - once["padded"]  # each row of a batch of 8 is spared 7/8 of the prompt
    assert 8 * saved >= MIN_SAVED_TOKENS and saved > 0.5 * per_row["mean"]


def test_plan_warns_that_cpu_memory_climbs_over_many_batches_of_varied_length():
    from lmtune.plan.report import heap_growth_note

    varied, even = {"mean": 48, "max": 101}, {"mean": 500, "max": 512}
    assert "resident memory can climb" in heap_growth_note("cpu", varied, 250)
    # One sweep of batches, rows of one length, or a GPU's caching allocator: nothing to say.
    assert heap_growth_note("cpu", varied, 50) is None
    assert heap_growth_note("cpu", even, 250) is None
    assert heap_growth_note("cuda", varied, 250) is None
    assert heap_growth_note("cpu", None, 250) is None


def test_lora_on_the_last_layers_keeps_and_computes_below_them_nothing(tiny_llama):
    """`method.last_layers`: the blocks below the lowest adapted one run forward only and keep
    nothing for the backward pass; the one timed block is still an adapted one."""
    config = LlamaConfig(**LLAMA3["8b"])
    every, last = (plan(load_config(None, ["train.batch_size=1", "data.max_length=512", *extra]), config=config,
                        throughput=100_000, measure_rate=False)[0] for extra in ([], ["method.last_layers=8"]))
    assert last.memory.activations == pytest.approx(every.memory.activations / 4)  # 8 of 32 blocks
    assert last.memory_checkpointed.activations < every.memory_checkpointed.activations
    assert last.trainable == every.trainable // 4
    # forward through 32 blocks, backward through 8: 2 + 2/4 of the 4 units a LoRA step costs per parameter
    shape, batch = model_shape(config), Batch(1, 512, 512, 512)
    assert (every.backward, last.backward) == (1.0, 0.25)
    flops = [flops_per_step(shape, "lora", p.trainable, batch, False, p.backward) for p in (every, last)]
    assert flops[1] / flops[0] == pytest.approx(0.625, abs=0.03)

    base = [f"model.name={tiny_llama}", *SENTIMENT]
    every, last = (plan(load_config(None, [*base, *extra]), throughput=10)[0] for extra in ([], ["method.last_layers=1"]))
    assert 0 < last.seconds_per_epoch < every.seconds_per_epoch
    timed = plan(load_config(None, [*base, "method.last_layers=1"]))[0]  # times one adapted block of the two
    assert timed.seconds_per_epoch > 0


@pytest.mark.parametrize("method, backward", [
    (["method.name=freeze", "method.train_last_layers=8"], 0.25),  # blocks 24-31 train
    (["method.name=freeze", "method.train_last_layers=0", "method.train_patterns=[lm_head*]"], 0.0),  # untied head only
    (["method.name=freeze", "method.train_last_layers=8", "method.train_patterns=['*norm*']"], 1.0),  # block 0's norms
    (["method.name=freeze", "method.train_last_layers=0", "method.train_patterns=['*embed_tokens*']"], 1.0),
    (["method.name=prompt_tuning"], 1.0),  # virtual tokens enter below every block
    (["method.name=ia3"], 1.0),
    (["method.name=full"], 1.0),
])
def test_the_backward_pass_runs_from_the_lowest_trained_parameter_up(method, backward):
    """Freeze's frozen lower blocks keep nothing and compute no gradient, like LoRA's `last_layers`:
    the plan's activations and backward FLOPs count only the blocks from the lowest trained one up."""
    config = LlamaConfig(**LLAMA3["8b"])
    cfg = load_config(None, ["train.batch_size=1", "data.max_length=512", *method])
    planned = plan(cfg, config=config, throughput=100_000, measure_rate=False)[0]
    assert planned.backward == backward
    if planned.method == "freeze":
        full = plan(load_config(None, ["train.batch_size=1", "data.max_length=512", "method.name=full"]), config=config,
                    throughput=100_000, measure_rate=False)[0]
        assert planned.memory.activations == pytest.approx(full.memory.activations * backward)  # 7.2 units each
