"""The one-node RMSNorm and SiLU(gate) * up (model/lean_block.py) compute what transformers' modules
compute: the same outputs bit for bit, gradients to rounding, less kept for the backward pass, and
the same weights after training."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

import lmtune.training.prepare as prepare
from lmtune.config import load_config
from lmtune.model.lean_block import RMSNormFunction, SiluMulFunction, use_lean_block
from lmtune.training.run import train

from conftest import SENTIMENT


def norm(dtype, trained: bool) -> LlamaRMSNorm:
    torch.manual_seed(0)
    module = LlamaRMSNorm(64, eps=1e-5).to(dtype)
    with torch.no_grad():
        module.weight.normal_(1.0, 0.3)
    return module.requires_grad_(trained)


def run(module, inputs, weights):
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    y = module(*inputs)
    (y.double() * torch.linspace(-1, 1, y.shape[-1], dtype=torch.float64)).sum().backward()
    grads = [x.grad for x in inputs] + [w.grad for w in weights if w.requires_grad]
    module.zero_grad()
    return y.detach(), grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("trained", [False, True])
def test_rms_norm_gives_transformers_output_and_gradients_at_least_as_exact(dtype, trained):
    module = norm(dtype, trained)
    x = torch.randn(3, 7, 64, dtype=dtype) * 4
    y_plain, g_plain = run(module, [x], [module.weight])
    exact = norm(torch.float64, trained)  # the same formula in float64
    with torch.no_grad():
        exact.weight.copy_(module.weight)
    _, g_exact = run(exact, [x.double()], [exact.weight])
    assert use_lean_block(module) == 1 and type(module).__name__ == "LlamaRMSNorm"
    y_lean, g_lean = run(module, [x], [module.weight])
    assert y_lean.dtype == dtype and torch.equal(y_lean, y_plain)
    assert len(g_lean) == len(g_plain) == (2 if trained else 1)
    for lean, plain, want in zip(g_lean, g_plain, g_exact):
        assert lean.dtype == plain.dtype
        lean_error, plain_error = (lean.double() - want).norm(), (plain.double() - want).norm()
        if dtype == torch.bfloat16:  # transformers rounds the gradient to bf16 half-way; the node does not
            assert lean_error <= plain_error and lean_error < 1e-2 * want.norm(), (lean_error, plain_error)
        else:  # both are float32 rounding away from exact
            assert lean_error < 1e-6 * want.norm() and plain_error < 1e-6 * want.norm()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_times_up_gives_transformers_outputs_and_gradients_bit_for_bit(dtype):
    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=80, num_attention_heads=4, hidden_act="silu")).to(dtype)
    x = torch.randn(2, 5, 32, dtype=dtype)
    weights = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    y_plain, g_plain = run(mlp, [x], weights)
    assert use_lean_block(mlp) == 1 and type(mlp).__name__ == "LlamaMLP"
    y_lean, g_lean = run(mlp, [x], weights)
    assert torch.equal(y_lean, y_plain)
    for lean, plain in zip(g_lean, g_plain):
        assert torch.equal(lean, plain)


def saved_bytes(fn, *inputs) -> int:
    storages = {}

    def keep(t):
        if not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


def test_less_is_kept_for_the_backward_pass():
    x = torch.randn(16, 64, dtype=torch.bfloat16, requires_grad=True)
    gate, up = (torch.randn(16, 80, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    weight = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16), requires_grad=False)  # a frozen norm
    # transformers keeps an fp32 copy of x (4 bytes an element); the node keeps x and one fp32 per row.
    assert saved_bytes(LlamaRMSNorm(64).to(torch.bfloat16), x) >= 16 * 64 * 4
    assert saved_bytes(RMSNormFunction.apply, x, weight, 1e-5) == 16 * 64 * 2 + 16 * 4
    # silu(gate) * up keeps gate, silu(gate) and up; the node keeps gate and up.
    assert saved_bytes(lambda g, u: torch.nn.functional.silu(g) * u, gate, up) == 3 * 16 * 80 * 2
    assert saved_bytes(SiluMulFunction.apply, gate, up) == 2 * 16 * 80 * 2


def test_only_the_llama_formula_is_replaced(tiny_llama, tiny_gpt2):
    from transformers import AutoModelForCausalLM
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    llama = AutoModelForCausalLM.from_pretrained(tiny_llama)
    layers = llama.config.num_hidden_layers
    assert use_lean_block(llama) == 3 * layers + 1  # two norms and an MLP a block, the final norm
    assert use_lean_block(llama) == 0  # once is enough
    assert use_lean_block(GemmaRMSNorm(8)) == 0  # (1 + weight): its own formula
    gelu = LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2, hidden_act="gelu"))
    assert use_lean_block(gelu) == 0
    assert use_lean_block(AutoModelForCausalLM.from_pretrained(tiny_gpt2)) == 0  # LayerNorm, GELU MLP


def weights(run_dir, method):
    name = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    return load_file(run_dir / name)


def relative_error(a: dict, b: dict) -> float:
    return float(sum((a[k].float() - b[k].float()).norm() ** 2 for k in b) ** 0.5 / sum(b[k].float().norm() ** 2 for k in b) ** 0.5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_gives_the_weights_of_the_plain_modules(tmp_path, tiny_llama, monkeypatch, method):
    common = [f"model.name={tiny_llama}", *SENTIMENT, "data.max_samples=24", "train.max_steps=6", "train.batch_size=4",
              "train.zero_shot_eval=false", f"method.name={method}", "train.precision=fp32", "train.optimizer=sgd",
              "train.lr=0.5" if method == "lora" else "train.lr=0.05"]
    # fp32 with SGD: the updates follow the gradients, so the two runs differ only by float rounding.
    train(load_config(None, [*common, f"output.dir={tmp_path / 'lean'}"]), reporters=[])
    monkeypatch.setattr(prepare, "use_lean_block", lambda model: 0)
    train(load_config(None, [*common, f"output.dir={tmp_path / 'plain'}"]), reporters=[])
    lean, plain = weights(tmp_path / "lean", method), weights(tmp_path / "plain", method)
    assert lean.keys() == plain.keys()
    assert relative_error(lean, plain) < 1e-5


def test_under_bf16_autocast_the_outputs_are_transformers():
    torch.manual_seed(0)
    modules = [norm(torch.bfloat16, trained=False),
               LlamaMLP(LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, hidden_act="silu"))]
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    for module in modules:  # the MLP's weights stay fp32: autocast casts them, as in full fine-tuning
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = module(x)
            use_lean_block(module)
            lean = module(x)
        assert lean.dtype == plain.dtype and torch.equal(lean, plain)
