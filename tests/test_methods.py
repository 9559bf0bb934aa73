"""Every method on the tiny Llama and GPT-2 models, for both causal-LM tasks: a few steps lower the
loss on a fixed batch, only the intended parameters change, save -> reload gives the same outputs,
and generation runs. Then merging, QLoRA's 4-bit base, and the combinations that are refused."""

import re

import pytest
import torch

from lmtune.config import load_config
from lmtune.errors import ConfigError
from lmtune.data.templates import Renderer
from lmtune.infer.generate import generate
from lmtune.loading import load_for_inference, quantization
from lmtune.model.load import load_model_and_tokenizer
from lmtune.run_dir import RunDir
from lmtune.training.prepare import prepare

from conftest import DATA

OPTIONS = {
    "full": [],
    "freeze": ["method.train_last_layers=1"],
    "lora": ["method.r=4"],
    "dora": ["method.r=4"],
    "qlora": ["method.r=4"],
    "ia3": [],
    "prompt_tuning": ["method.num_virtual_tokens=4"],
    "p_tuning": ["method.num_virtual_tokens=4", "method.encoder_hidden_size=16"],
    "prefix_tuning": ["method.num_virtual_tokens=4", "method.encoder_hidden_size=16"],
    "p_tuning_v2": ["method.num_virtual_tokens=4"],
}
# Which parameter names each method may train (besides nothing else); a classification head
# (score / classifier) always trains too.
HEAD = r"|(score|classifier)\."
TRAINS = {
    "full": r".",
    "freeze": r"(layers\.1\.|h\.1\.|layer\.1\.)",
    "lora": r"lora_[AB]", "qlora": r"lora_[AB]", "dora": r"lora_([AB]|magnitude)",
    "ia3": r"ia3_l",
    "prompt_tuning": r"prompt_encoder", "p_tuning": r"prompt_encoder",
    "prefix_tuning": r"prompt_encoder", "p_tuning_v2": r"prompt_encoder",
}
TASK_DATA = {
    "label_tokens": [f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}", "data.format=classification",
                     "data.labels=[negative, positive]", "task.name=label_tokens", "data.max_samples=4"],
    "sft": [f"data.train={DATA / 'alpaca_en_demo' / 'alpaca_en_demo.json'}", "data.format=instruction",
            "task.name=sft", "data.max_samples=4", "data.max_length=64"],
    "seq_cls": [f"data.train={DATA / 'rotten_tomatoes' / 'validation.jsonl'}", "data.format=classification",
                "data.labels=[negative, positive]", "task.name=seq_cls", "data.max_samples=4"],
    "embedding": [f"data.train={DATA / 'stsb' / 'validation.jsonl'}", "data.format=pairs", "data.score_range=[0, 5]",
                  "task.name=embedding", "data.max_samples=4"],
}
# Causal-LM tasks on both decoders; the head task on a decoder and on an encoder.
TASK_FAMILIES = [("label_tokens", "llama"), ("label_tokens", "gpt2"), ("sft", "llama"), ("sft", "gpt2"),
                 ("seq_cls", "llama"), ("seq_cls", "bert"), ("embedding", "llama"), ("embedding", "bert")]
PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2")


def build(model_dir, method, task_name, extra=()):
    cfg = load_config(None, [f"model.name={model_dir}", f"method.name={method}", *OPTIONS[method],
                             *TASK_DATA[task_name], "train.precision=fp32", "train.seed=0", *extra])
    run = prepare(cfg)  # what `lmtune train` builds before its first step
    model, ds = run.model, run.train_data
    device = next(model.parameters()).device  # a 4-bit model is placed on the GPU when there is one
    batch = {k: v.to(device) for k, v in run.task.collator()([ds[i] for i in range(len(ds))]).items()}
    return cfg, model, run.tokenizer, run.task, batch


def mean_loss(task, model, batch):
    total, n = task.loss(model, batch)
    return total / n


@pytest.mark.parametrize("task_name, family", TASK_FAMILIES)
@pytest.mark.parametrize("method", list(OPTIONS))
def test_method_trains_only_its_parameters_and_reloads(tmp_path, request, method, family, task_name):
    torch.manual_seed(0)
    if task_name == "seq_cls" and method in ("prefix_tuning", "p_tuning_v2"):
        # transformers' classification classes take no key/value cache: refused with the alternatives.
        with pytest.raises(ConfigError, match="takes no key/value cache.*use prompt_tuning, p_tuning or lora"):
            build(request.getfixturevalue(f"tiny_{family}"), method, task_name)
        return
    if task_name == "embedding" and method in PROMPT_METHODS:
        with pytest.raises(ConfigError, match="pools the hidden states of a text's own tokens.*Use lora"):
            build(request.getfixturevalue(f"tiny_{family}"), method, task_name)
        return
    cfg, model, tokenizer, task, batch = build(request.getfixturevalue(f"tiny_{family}"), method, task_name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    allowed = TRAINS[method] + (HEAD if task_name == "seq_cls" else "")
    assert trainable and all(re.search(allowed, n) for n in trainable), sorted(trainable)[:5]
    if task_name == "seq_cls":
        assert any(re.search(r"(score|classifier)\.", n) for n in trainable), "the head must train"
    # 4-bit weights are left out: bitsandbytes repacks them for its CPU kernels on first use (same
    # values, new layout); they are frozen and never reach the optimizer.
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype != torch.uint8}

    model.eval()
    with torch.no_grad():
        first = mean_loss(task, model, batch).item()
    model.train()
    # Cosine similarities of unit vectors move far with a large step: the embedding task gets a smaller one.
    lr = 1e-3 if task_name == "embedding" else 1e-2
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(6):
        loss = mean_loss(task, model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        last = mean_loss(task, model, batch).item()
    assert last < first

    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])}
    assert changed == trainable  # every trained tensor got a gradient, and nothing else moved

    out = RunDir.create(tmp_path / "run", overwrite=False)
    out.write_config(cfg)
    out.save_weights(model, tokenizer)
    reloaded = load_for_inference(out).model
    with torch.no_grad():
        expected = mean_loss(task, model, batch).cpu()
        got = mean_loss(task, reloaded, {k: v.to(next(reloaded.parameters()).device) for k, v in batch.items()}).cpu()
    # QLoRA: the reloaded (inference) model multiplies with bitsandbytes' packed CPU kernel, whose
    # rounding differs from the training kernel's by ~1e-5 relative.
    tolerance = 1e-3 if method == "qlora" else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    if task.generates:
        answer = generate(reloaded, tokenizer, Renderer(tokenizer, cfg.data.template), "a fine film", max_new_tokens=3)
        assert isinstance(answer, str)


def test_freeze_by_name_patterns(tiny_llama):
    _, model, _, _, _ = build(tiny_llama, "freeze", "sft", ["method.train_last_layers=0", "method.train_patterns=['model.norm.*', '*embed_tokens*']"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model.norm.weight", "model.embed_tokens.weight"}
    with pytest.raises(ConfigError, match=r"'\*nothing\*' matches no parameter; module names include: .*q_proj"):
        build(tiny_llama, "freeze", "sft", ["method.train_patterns=['*nothing*']"])


def test_qlora_base_is_really_4_bit(tiny_llama):
    # (tiny models are 64 wide: the CPU 4-bit kernels need rows of at least one 64-value block)
    _, model, _, _, _ = build(tiny_llama, "qlora", "sft")
    import bitsandbytes as bnb

    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 14  # 7 projections x 2 layers
    assert all(m.weight.dtype == torch.uint8 and m.weight.quant_state.quant_type == "nf4" for m in linear4)


@pytest.mark.parametrize("method, extra", [("lora", []), ("lora", ["method.last_layers=1"]), ("dora", []), ("ia3", []),
                                           ("qlora", [])])
def test_merge_gives_the_same_logits_as_the_adapter(tmp_path, tiny_llama, method, extra, capsys):
    from transformers import AutoModelForCausalLM

    from lmtune.cli import main

    run, merged_dir = tmp_path / "run", tmp_path / "merged"
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {tiny_llama}\nmethod:\n  name: {method}\n")
    assert main(["train", str(config), "--output-dir", str(run), *TASK_DATA["sft"], "train.max_steps=3",
                 "train.lr=5e-2", "train.precision=fp32", "train.zero_shot_eval=false", *extra]) == 0
    assert main(["merge", str(run), str(merged_dir)]) == 0
    assert "max |logit difference|" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    loaded = load_for_inference(run, quantized=False, dtype=torch.float32)
    adapter_model, tokenizer = loaded.model, loaded.tokenizer
    ids = torch.tensor([tokenizer("a gorgeous, witty film", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        # Tolerance: fp32 merge W + scale * B A versus the unmerged sum, a few ulps of the logits.
        adapter_logits = adapter_model(input_ids=ids.to(next(adapter_model.parameters()).device)).logits.cpu()
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter_logits, rtol=1e-4, atol=1e-4)


def test_refused_combinations(tmp_path, tiny_llama, capsys):
    from lmtune.cli import main

    with pytest.raises(ConfigError, match=r"gradient checkpointing.*train.gradient_checkpointing=false"):
        load_config(None, ["method.name=prefix_tuning", "train.gradient_checkpointing=true"])
    with pytest.raises(ConfigError, match=r"packed row.*data.packing=false"):
        load_config(None, ["method.name=prompt_tuning", "data.packing=true"])
    with pytest.raises(ConfigError, match=r"unknown method 'lorra'"):
        load_config(None, ["method.name=lorra"])
    with pytest.raises(ConfigError, match=r"unknown key 'method.r' for method 'full'"):
        load_config(None, ["method.name=full", "method.r=4"])
    with pytest.raises(ConfigError, match=r"unknown key 'method.alhpa' for method 'lora'; did you mean 'alpha'"):
        load_config(None, ["method.alhpa=4"])

    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name: {tiny_llama}\nmethod:\n  name: prompt_tuning\n  num_virtual_tokens: 2\n")
    assert main(["train", str(config), "--output-dir", str(run), *TASK_DATA["sft"], "train.max_steps=1",
                 "train.precision=fp32", "train.zero_shot_eval=false"]) == 0
    capsys.readouterr()
    assert main(["merge", str(run), str(tmp_path / "merged")]) == 2
    assert "cannot be folded into weights" in capsys.readouterr().err


@pytest.mark.parametrize("family, task_name", [("llama", "sft"), ("gpt2", "label_tokens"), ("bert", "seq_cls")])
def test_lora_on_the_last_layers_only_and_no_backward_below_them(tmp_path, request, family, task_name):
    cfg, model, tokenizer, task, batch = build(request.getfixturevalue(f"tiny_{family}"), "lora", task_name,
                                               ["method.last_layers=1"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.search(r"(layers|h|layer)\.1\..*lora_[AB]" + HEAD, n) for n in trainable), sorted(trainable)
    from lmtune.model.blocks import named_blocks

    records = []
    for block in named_blocks(model)[1]:
        block.register_forward_hook(lambda module, args, out: records.append((out[0] if isinstance(out, tuple) else out).requires_grad))
    mean_loss(task, model, batch).backward()
    assert records == [False, True]  # autograd records nothing in block 0: the backward pass ends at block 1

    out = RunDir.create(tmp_path / "run", overwrite=False)
    out.write_config(cfg)
    out.save_weights(model, tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(mean_loss(task, load_for_inference(out).model, batch), mean_loss(task, model, batch))
    with pytest.raises(ConfigError, match=r"method.last_layers: 3 > the model's 2 blocks"):
        build(request.getfixturevalue(f"tiny_{family}"), "lora", task_name, ["method.last_layers=3"])


def test_qlora_layers_still_pass_gradients_after_an_evaluation(tiny_llama):
    """bitsandbytes repacks 4-bit weights for inference after an eval-mode pass on AVX512-BF16
    CPUs, and its packed matmul passes no gradient to its input; a model loaded to train (the
    zero-shot evaluation runs before training) must keep the trainable layout."""
    cfg = load_config(None, [f"model.name={tiny_llama}", "method.name=qlora", *TASK_DATA["sft"]])
    model, _ = load_model_and_tokenizer(cfg.model, torch.float32, quantization_config=quantization(cfg, "bf16"))
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]], device=device))
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(2, 128, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).float().sum(), x, allow_unused=True)
    assert grad is not None and grad.abs().sum() > 0


def test_rslora_scaling_and_lora_plus_learning_rates(tmp_path, tiny_llama):
    from lmtune.training.arguments import lora_plus_optimizer
    from lmtune.training.run import train

    cfg, model, _, _, _ = build(tiny_llama, "lora", "sft", ["method.use_rslora=true", "method.alpha=8", "method.lora_plus_ratio=16"])
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # alpha / sqrt(r), r=4
    optimizer = lora_plus_optimizer(model, cfg)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(layer.lora_B["default"].weight)] == pytest.approx(16 * lrs[id(layer.lora_A["default"].weight)])

    out = tmp_path / "run"
    run_cfg = load_config(None, [f"model.name={tiny_llama}", "method.name=lora", *TASK_DATA["sft"], "method.lora_plus_ratio=16",
                                 "train.max_steps=2", "train.precision=fp32", "train.zero_shot_eval=false", f"output.dir={out}"])
    assert train(run_cfg).metrics["train"]["steps"] == 2
