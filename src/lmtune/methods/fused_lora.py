"""LoRA's forward and backward as one autograd node per adapted layer, in the base's 16-bit dtype.

peft computes a LoRA layer as base(x) + B(A(dropout(x.to(fp32)))) * scaling, then casts the sum
back: under bf16 autocast that is a copy of the whole activation to fp32, a dropout over it, casts
back to bf16 for each product, a scaling multiply and an add, each an autograd node that keeps its
own inputs (the fp32 copy among them) for the backward pass. At the short rows of classification
(8 x 32 tokens) these per-layer elementwise passes and the Python around them cost more than the
matrix products themselves (docs/benchmarks.md, the 8 x 32 profile).

Here the same sum is two products and an in-place accumulate, in bf16:
    h = dropout(x) @ A^T          (N x r)
    y = x @ W^T + b;  y += scaling * h @ B^T
and the backward pass is written out: dB = scaling * g^T h, dA = (scaling * g B)^T dropout(x),
dx = g W + dropout'(scaling * g B A). Only dropout(x) (bf16), the mask and h are kept. The adapter's
own weights stay fp32 (the optimizer updates them there); their gradients are accumulated in fp32.
The dropout masks are FastDropout's, drawn in the same order, so a seeded run draws the same masks
as the plain path (tests/test_fused_lora.py trains both and compares the adapters).

The fast path applies to the plain case only: one active LoRA adapter, not merged, no DoRA, no
per-request adapter names; every other call goes to peft's own forward.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear

from lmtune.methods.fast_dropout import random_keep_mask


class LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float, compute_dtype):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(compute_dtype)
        w = weight.to(compute_dtype)
        # Dropout's 1 / (1 - p) goes into A, in A's own precision: 1.111 is 1.109 in bf16, a bias that
        # a scaled bf16 mask would put on every step.
        keep = 1.0 - p
        a, b = (lora_a / keep if p > 0 else lora_a).to(compute_dtype), lora_b.to(compute_dtype)
        mask = None
        dropped = x2
        if p > 0:
            mask = random_keep_mask(x2.shape, keep).to(compute_dtype)  # 0 / 1, exact in any dtype
            dropped = x2 * mask
        h = dropped @ a.t()
        y = torch.addmm(bias.to(compute_dtype), x2, w.t()) if bias is not None else x2 @ w.t()
        y.addmm_(h, b.t(), alpha=scaling)
        ctx.save_for_backward(dropped, mask, h, w, a, b)
        ctx.scaling, ctx.keep, ctx.x_dtype, ctx.has_bias = scaling, keep, x.dtype, bias is not None
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        dropped, mask, h, w, a, b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(w.dtype)
        grad_b = (g.t() @ h).mul_(ctx.scaling).to(ctx.b_dtype)
        gh = (g @ b).mul_(ctx.scaling)  # the gradient at h
        grad_a = (gh.t() @ dropped).to(ctx.a_dtype)
        if ctx.keep < 1.0:
            grad_a /= ctx.keep
        grad_x = None
        if ctx.needs_input_grad[0]:
            through_lora = gh @ a
            if mask is not None:
                through_lora.mul_(mask)
            grad_x = torch.addmm(through_lora, g, w).reshape(*grad.shape[:-1], w.shape[1]).to(ctx.x_dtype)
        grad_bias = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, grad_a, grad_b, None, None, None


class FusedLoraLinear(Linear):
    """peft's lora.Linear whose forward goes through LoraLinear in the plain case (a class swap, so
    that copies, pickles and peft's own isinstance checks keep working)."""

    def forward(self, x, *args, **kwargs):
        adapters = self.active_adapters
        base = self.base_layer
        if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
                or adapters[0] not in self.lora_A or adapters[0] in self.lora_variant
                or type(base) is not torch.nn.Linear or base.weight.requires_grad):
            return super().forward(x, *args, **kwargs)
        name = adapters[0]
        drop = self.lora_dropout[name]
        p = drop.p if isinstance(drop, torch.nn.Dropout) and self.training else 0.0
        device = x.device.type
        # The dtype peft's sum ends in: autocast's, or else the base layer's.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else base.weight.dtype
        return LoraLinear.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                                float(self.scaling[name]), p, dtype)


def use_fused_lora(model) -> int:
    """Route every plain LoRA linear layer of a peft model through LoraLinear; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
