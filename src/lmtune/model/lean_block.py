"""The elementwise parts of a Llama-style block as one autograd node each: RMSNorm and SiLU(gate) * up.

transformers writes both as chains of small operators, and autograd keeps what each operator needs:
RMSNorm keeps an fp32 copy of its input (2 x hidden x 2 bytes a token, for a bf16 model) and its
backward runs a dozen elementwise operators; SiLU(gate) * up keeps gate, SiLU(gate) and up. Here
RMSNorm keeps its 16-bit input and one fp32 number a row, and its backward is written out (about 3x
faster at SmolLM2's shapes); SiLU(gate) * up keeps gate and up and forms SiLU(gate) again in the
backward pass. The forward outputs are transformers' bit for bit; the gradients agree to rounding
(RMSNorm's are slightly closer to exact ones: they skip transformers' cast of the gradient to bf16).

Applied only where a module's forward is transformers' Llama formula, compared as source text, so
Gemma's (1 + weight) norms or any model with its own variant keep their own code.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch.nn import functional as F


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # transformers' order of operations, so the output is theirs bit for bit.
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return weight * (x * rstd).to(x.dtype)  # x * rstd promotes to fp32 without an fp32 copy of x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, rstd, weight = ctx.saved_tensors
        normed = x * rstd  # fp32
        grad_normed = grad.float() * weight
        dot = (grad_normed * normed).mean(-1, keepdim=True)
        grad_x = grad_normed.sub_(normed * dot).mul_(rstd).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:  # full fine-tuning trains the norms
            grad_weight = (grad.float() * normed).reshape(-1, normed.shape[-1]).sum(0).to(weight.dtype)
        return grad_x, grad_weight, None


class SiluMulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        # The same operators autograd runs for silu(gate) * up, so the same gradients bit for bit.
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


def rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)


def swiglu_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(SiluMulFunction.apply(self.gate_proj(x), self.up_proj(x)))


@functools.cache
def _llama_sources() -> tuple[str, str]:
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    return inspect.getsource(LlamaRMSNorm.forward), inspect.getsource(LlamaMLP.forward)


@functools.cache
def _lean_class(cls: type) -> type | None:
    """cls with the lean forward, when cls.forward is transformers' Llama RMSNorm or MLP; else None."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return None
    norm, mlp = _llama_sources()
    forward = {norm: rms_norm_forward, mlp: swiglu_mlp_forward}.get(source)
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__}) if forward else None


def use_lean_block(model: torch.nn.Module) -> int:
    """Give every Llama-formula RMSNorm, and every Llama-formula MLP whose activation is SiLU, the
    one-node forward above (the module keeps its class's name and weights); returns how many."""
    count = 0
    for module in model.modules():
        lean = _lean_class(type(module))
        if lean is None or (lean.forward is swiglu_mlp_forward and not _is_silu(module.act_fn)):
            continue
        module.__class__ = lean
        count += 1
    return count


def _is_silu(act) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"
