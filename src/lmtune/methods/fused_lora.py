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
dx = g W + dropout'(scaling * g B A). Only x (bf16; one copy for the layers that share an input),
the boolean mask and h are kept; dropout(x) is formed again in the backward pass. The adapter's
own weights stay fp32 (the optimizer updates them there); their gradients are accumulated in fp32.
The dropout masks are FastDropout's, drawn in the same order, so a seeded run draws the same masks
as the plain path (tests/test_fused_lora.py trains both and compares the adapters).

The fast path applies to the plain case only: one active LoRA adapter, not merged, no DoRA, no
per-request adapter names; every other call goes to peft's own forward.
"""

from __future__ import annotations

from typing import Optional

import torch
from peft.tuners.lora.layer import Linear

from lmtune.methods.fast_dropout import random_keep_mask


def lora_forward(x2, weight, bias, lora_a, lora_b, scaling: float, p: float, compute_dtype):
    """y = x W^T + b + scaling * dropout(x) A^T B^T for rows x2 (N x in), in compute_dtype; also
    returns what the backward pass needs besides x: the boolean keep mask (None without dropout),
    h = dropout(x) A^T, and the adapter's weights in compute_dtype."""
    x2 = x2.to(compute_dtype)
    w = weight.to(compute_dtype)
    a, b = lora_weights(lora_a, lora_b, p, compute_dtype)
    mask = random_keep_mask(x2.shape, 1.0 - p, x2.device) if p > 0 else None
    h = dropped(x2, mask) @ a.t()
    y = torch.addmm(bias.to(compute_dtype), x2, w.t()) if bias is not None else x2 @ w.t()
    y.addmm_(h, b.t(), alpha=scaling)
    return y, mask, h, a, b


def dropped(x2, mask):
    """x2 with the dropped elements zeroed. The mask is multiplied in as bytes: multiplying by the
    boolean mask converts it to x2's dtype first, a copy that took 4x the multiply itself (0.37 of
    0.47 ms at 1,680 x 576)."""
    return x2 if mask is None else x2 * mask.view(torch.uint8)


def lora_weights(lora_a, lora_b, p: float, compute_dtype):
    # Dropout's 1 / (1 - p) goes into A, in A's own precision: 1.111 is 1.109 in bf16, a bias that
    # a scaled bf16 mask would put on every step.
    return (lora_a / (1.0 - p) if p > 0 else lora_a).to(compute_dtype), lora_b.to(compute_dtype)


def lora_backward(grad2, x2, mask, h, w, a, b, scaling: float, p: float, need_x: bool, adapter_dtype):
    """Gradients at x (None unless need_x), and at A and B in the adapter's dtype, for rows grad2
    of the layer whose input rows were x2 (in compute_dtype) and keep mask `mask`."""
    g = grad2.to(w.dtype)
    grad_b = (g.t() @ h).mul_(scaling).to(adapter_dtype)
    gh = (g @ b).mul_(scaling)  # the gradient at h
    grad_a = (gh.t() @ dropped(x2, mask)).to(adapter_dtype)
    if p > 0:
        grad_a /= 1.0 - p
    grad_x = None
    if need_x:
        through_lora = gh @ a
        if mask is not None:
            through_lora.mul_(mask.view(torch.uint8))
        grad_x = torch.addmm(through_lora, g, w)
    return grad_x, grad_a, grad_b


class LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float, compute_dtype):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(compute_dtype)
        y, mask, h, a, b = lora_forward(x2, weight, bias, lora_a, lora_b, scaling, p, compute_dtype)
        # x itself, not dropout(x): the layers that read one input (q, k, v; gate, up) keep one copy
        # of it between them, each with its own one-byte mask, where each kept its own 16-bit
        # product and mask before.
        ctx.save_for_backward(x2, mask, h, weight.to(compute_dtype), a, b)
        ctx.scaling, ctx.p, ctx.x_dtype, ctx.has_bias = scaling, p, x.dtype, bias is not None
        ctx.adapter_dtype = lora_a.dtype
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, mask, h, w, a, b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_x, grad_a, grad_b = lora_backward(g, x2, mask, h, w, a, b, ctx.scaling, ctx.p,
                                               ctx.needs_input_grad[0], ctx.adapter_dtype)
        if grad_x is not None:
            grad_x = grad_x.reshape(*grad.shape[:-1], w.shape[1]).to(ctx.x_dtype)
        grad_bias = g.to(w.dtype).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, grad_a, grad_b, None, None, None


@torch.library.custom_op("lmtune::lora_linear", mutates_args=())
def lora_linear_op(x2: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], lora_a: torch.Tensor,
                   lora_b: torch.Tensor, scaling: float, p: float,
                   compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LoraLinear for torch.compile: an operator the compiler calls as it is (its products and masks
    unchanged) while it fuses the block's other work around it. Returns y and, for the backward
    pass, the keep mask (empty without dropout) and h."""
    y, mask, h, _, _ = lora_forward(x2, weight, bias, lora_a, lora_b, scaling, p, compute_dtype)
    return y, x2.new_empty(0, dtype=torch.bool) if mask is None else mask, h


@lora_linear_op.register_fake
def _(x2, weight, bias, lora_a, lora_b, scaling, p, compute_dtype):
    rows, cols = x2.shape
    return (x2.new_empty(rows, weight.shape[0], dtype=compute_dtype),
            x2.new_empty((rows, cols) if p > 0 else (0,), dtype=torch.bool),
            x2.new_empty(rows, lora_a.shape[0], dtype=compute_dtype))


def _op_setup(ctx, inputs, output):
    x2, weight, bias, lora_a, lora_b, scaling, p, compute_dtype = inputs
    _, mask, h = output
    ctx.save_for_backward(x2, weight, lora_a, lora_b, mask, h)
    ctx.scaling, ctx.p, ctx.compute_dtype, ctx.has_bias = scaling, p, compute_dtype, bias is not None


def _op_backward(ctx, grad, *unused):
    x2, weight, lora_a, lora_b, mask, h = ctx.saved_tensors
    p, dtype = ctx.p, ctx.compute_dtype
    a, b = lora_weights(lora_a, lora_b, p, dtype)
    grad_x, grad_a, grad_b = lora_backward(grad, x2.to(dtype), mask if p > 0 else None, h, weight.to(dtype), a, b,
                                           ctx.scaling, p, ctx.needs_input_grad[0], lora_a.dtype)
    grad_x = grad_x.to(x2.dtype) if grad_x is not None else None
    grad_bias = grad.to(dtype).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_x, None, grad_bias, grad_a, grad_b, None, None, None


lora_linear_op.register_autograd(_op_backward, setup_context=_op_setup)


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
        args = (base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name]),
                p, dtype)
        # The custom operator only under compilation: run eagerly, its dispatch made a seed-recipe
        # step about 3% slower than the autograd node (0.729 against 0.705 s, alternating in one process).
        rows = x.reshape(-1, x.shape[-1])
        if torch.compiler.is_compiling():
            y = lora_linear_op(rows, *args)[0]
        elif not torch.is_grad_enabled():  # evaluation and generation: the node's arithmetic, without its bookkeeping
            y = lora_forward(rows, *args)[0]
        else:
            return LoraLinear.apply(x, *args)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def use_fused_lora(model) -> int:
    """Route every plain LoRA linear layer of a peft model through LoraLinear; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
