"""LoRA through one autograd node per layer (methods/fused_lora.py) computes what peft's path
computes: the same outputs and gradients for a layer, the same adapter after training (to bf16
rounding), and a merge that reproduces the adapter model."""

import pytest
import torch
from safetensors.torch import load_file

import lmtune.methods.peft_common as peft_common
from lmtune.config import load_config
from lmtune.methods.fused_lora import FusedLoraLinear, LoraLinear, use_fused_lora
from lmtune.training.run import train

from conftest import SENTIMENT


def lora_layer(dtype, dropout, bias):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 40, bias=bias)).to(dtype)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0"]))
    peft_common.use_fast_dropout(model)
    layer = model.base_model.model[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # B starts at zero: make the adapter matter
    return layer


def run_layer(layer, x, autocast: bool):
    torch.manual_seed(7)  # the same dropout masks on both paths
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [x.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad]
    layer.zero_grad()
    return y.detach(), grads


def assert_near(got, want, rtol):
    """Equal to rounding: elementwise within rtol, or within rtol of the tensor's mean size."""
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=rtol * want.float().abs().mean().item())


@pytest.mark.parametrize("dtype, autocast, rtol", [(torch.bfloat16, True, 2e-2), (torch.float32, False, 1e-5)])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_layer_gives_peft_outputs_and_gradients(dtype, autocast, rtol, dropout):
    layer = lora_layer(dtype, dropout, bias=True)
    x = torch.randn(3, 5, 48, dtype=dtype)
    y_plain, g_plain = run_layer(layer, x, autocast)
    assert use_fused_lora(layer) == 1 and type(layer) is FusedLoraLinear
    y_fused, g_fused = run_layer(layer, x, autocast)
    assert_near(y_fused, y_plain, rtol)
    for fused, plain in zip(g_fused, g_plain):  # the input's, A's and B's gradients
        assert_near(fused, plain, rtol)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_operator_torch_compile_calls_computes_what_the_eager_node_computes(dropout, monkeypatch):
    """Under torch.compile a LoRA layer is the custom operator lmtune::lora_linear (opaque to the
    compiler, so its masks do not break the graph); run here without compiling, it must give the
    autograd node's outputs and gradients exactly: the same products, the same masks."""
    layer = lora_layer(torch.bfloat16, dropout, bias=True)
    use_fused_lora(layer)
    x = torch.randn(3, 5, 48, dtype=torch.bfloat16)
    y_node, g_node = run_layer(layer, x, autocast=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    y_op, g_op = run_layer(layer, x, autocast=True)
    torch.testing.assert_close(y_op, y_node, rtol=0, atol=0)
    for op, node in zip(g_op, g_node):
        torch.testing.assert_close(op, node, rtol=0, atol=0)


def test_without_gradients_a_layer_computes_what_the_node_computes():
    """Evaluation and generation skip the autograd node (its bookkeeping made generation slower than
    peft's forward); the arithmetic, and so every output bit, must stay the node's."""
    layer = lora_layer(torch.bfloat16, 0.1, bias=True)
    use_fused_lora(layer)
    layer.eval()
    x = torch.randn(3, 5, 48, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_node = layer(x.clone().requires_grad_(True))
        assert y_node.grad_fn is not None and "LoraLinear" in type(y_node.grad_fn).__name__
        with torch.inference_mode():
            y_plain = layer(x)
    assert y_plain.grad_fn is None
    torch.testing.assert_close(y_plain, y_node.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_layer_off_the_cpu_keeps_every_tensor_on_its_device(dropout):
    """No GPU here: the meta device stands in for one. Everything the layer's node makes, its
    dropout mask among them, must be on the input's device (a mask drawn on the CPU met a CUDA input
    before)."""
    def meta(*shape, grad=False):
        return torch.randn(*shape, device="meta", requires_grad=grad)

    x, lora_a, lora_b = meta(3, 5, 48, grad=True), meta(4, 48, grad=True), meta(40, 4, grad=True)
    y = LoraLinear.apply(x, meta(40, 48), meta(40), lora_a, lora_b, 2.0, dropout, torch.bfloat16)
    y.float().sum().backward()
    assert y.device.type == "meta" and y.shape == (3, 5, 40)
    assert all(t.grad.device.type == "meta" for t in (x, lora_a, lora_b))


def test_layers_that_share_an_input_keep_one_copy_of_it():
    """What the backward pass keeps of three adapted layers reading one input (q, k and v do): the
    input once, a one-byte mask per layer and the thin h = dropout(x) A^T; not a 16-bit dropout(x)
    and mask per layer (2.3x as much here)."""
    layers = [lora_layer(torch.bfloat16, 0.1, bias=False) for _ in range(3)]
    for layer in layers:
        use_fused_lora(layer)
    x = torch.randn(4096, 48, dtype=torch.bfloat16, requires_grad=True)
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        ys = [layer(x) for layer in layers]
    rank = layers[0].lora_A["default"].weight.shape[0]
    weights = sum(2 * p.numel() for layer in layers for p in layer.parameters())  # their bf16 copies
    expected = x.nbytes + 3 * x.numel() + 3 * x.shape[0] * rank * 2 + weights
    assert sum(kept.values()) <= expected
    sum(y.float().sum() for y in ys).backward()
    assert x.grad is not None and all(layer.lora_A["default"].weight.grad is not None for layer in layers)


def test_other_calls_go_to_peft():
    layer = lora_layer(torch.float32, 0.0, bias=False)
    use_fused_lora(layer)
    x = torch.randn(2, 48)
    layer.merge()
    merged = layer(x)  # merged: peft's path (the base layer holds the update)
    layer.unmerge()
    torch.testing.assert_close(layer(x), merged, atol=1e-5, rtol=0)
    layer.base_layer.weight.requires_grad_(True)  # a trained base: peft's path, which computes its gradient
    layer(x).sum().backward()
    assert layer.base_layer.weight.grad is not None


def adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def total_error(a: dict, b: dict) -> float:
    """|a - b| over all of an adapter's tensors, relative to |b|."""
    return float(sum((a[k].float() - b[k].float()).norm() ** 2 for k in b) ** 0.5 / sum(b[k].float().norm() ** 2 for k in b) ** 0.5)


def test_training_gives_the_adapter_of_the_plain_path_and_merges(tmp_path, tiny_llama, monkeypatch):
    common = [f"model.name={tiny_llama}", *SENTIMENT, "data.max_samples=24", "train.max_steps=6", "train.batch_size=4",
              "train.lr=5e-3", "train.zero_shot_eval=false", "method.dropout=0.1"]
    # fp32 with SGD (updates proportional to the gradients: Adam's first steps are about lr x sign(g),
    # which turns float rounding on a near-zero gradient into a whole step) and bf16 with AdamW.
    runs = {"fp32": ["train.precision=fp32", "train.optimizer=sgd", "train.lr=0.5"], "bf16": ["train.precision=bf16"]}
    for name, settings in runs.items():
        train(load_config(None, [*common, *settings, f"output.dir={tmp_path / ('fused-' + name)}"]), reporters=[])
    monkeypatch.setattr(peft_common, "fused_lora", lambda model: 0)
    for name, settings in runs.items():
        train(load_config(None, [*common, *settings, f"output.dir={tmp_path / ('plain-' + name)}"]), reporters=[])
    train(load_config(None, [*common, "train.precision=fp32", f"output.dir={tmp_path / 'plain-fp32-adamw'}"]), reporters=[])
    fused, plain = adapter(tmp_path / "fused-fp32"), adapter(tmp_path / "plain-fp32")
    assert fused.keys() == plain.keys()
    assert total_error(fused, plain) < 1e-5  # fp32: the same computation, to float rounding
    # bf16: both paths round their products to bf16, at different places; Adam's nearly sign-sized
    # steps turn that into a few elements moved by ~lr. The fused path must be as close to the fp32
    # run as peft's own bf16 path is.
    reference = adapter(tmp_path / "plain-fp32-adamw")
    fused_error, plain_error = total_error(adapter(tmp_path / "fused-bf16"), reference), total_error(adapter(tmp_path / "plain-bf16"), reference)
    assert fused_error < 1.5 * plain_error and fused_error < 0.05, (fused_error, plain_error)
    # `lmtune merge` of the fused-trained run gives the adapter model's logits.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmtune.cli import main

    assert main(["merge", str(tmp_path / "fused-bf16"), str(tmp_path / "merged")]) == 0
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    with torch.no_grad():
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "fused-bf16" / "adapter")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        torch.testing.assert_close(merged(ids).logits, tuned.eval()(ids).logits, atol=1e-4, rtol=1e-4)
