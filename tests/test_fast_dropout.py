"""The cheaper LoRA dropout draws the same masks in distribution as nn.Dropout."""

import pytest
import torch
from torch import nn

from lmtune.methods.fast_dropout import FastDropout, random_keep_mask, use_fast_dropout


def test_keep_mask_is_bernoulli_per_element():
    torch.manual_seed(0)
    keep = random_keep_mask(torch.Size([1000, 1000]), 0.9).float()
    n = keep.numel()
    assert abs(keep.mean().item() - 0.9) < 4 * (0.09 / n) ** 0.5
    # Independent neighbours (the four 16-bit lanes of one 64-bit draw): both kept 0.81 of the time.
    pairs = keep.view(-1, 4)
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 0)]:
        assert abs((pairs[:, a] * pairs[:, b]).mean().item() - 0.81) < 0.005
    torch.manual_seed(1)
    again = random_keep_mask(torch.Size([1000, 1000]), 0.9).float()
    assert not torch.equal(keep, again)
    torch.manual_seed(0)
    assert torch.equal(keep, random_keep_mask(torch.Size([1000, 1000]), 0.9).float())  # seeded by torch's RNG
    # Each mask from a generator of its own, seeded from torch's: the next mask is independent.
    after = random_keep_mask(torch.Size([1000, 1000]), 0.9).float()
    assert abs((keep * after).mean().item() - 0.81) < 0.005


def test_keep_mask_off_the_cpu_is_drawn_on_the_device():
    mask = random_keep_mask(torch.Size([3, 4]), 0.9, torch.device("meta"))
    assert mask.device.type == "meta" and mask.dtype == torch.bool and mask.shape == (3, 4)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_fast_dropout_matches_nn_dropout_in_distribution_and_gradient(p):
    torch.manual_seed(0)
    x = torch.randn(64, 48, 32, requires_grad=True)
    drop = FastDropout(p).train()
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    torch.testing.assert_close(y[kept], (x / (1 - p))[kept])
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    # The expectation of the output is the input, as for nn.Dropout.
    mean = torch.stack([drop(x.detach()) for _ in range(400)]).mean(0)
    assert (mean - x.detach()).abs().mean() < 0.05
    drop.eval()
    assert torch.equal(drop(x), x)


def test_peft_lora_dropouts_are_swapped(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert use_fast_dropout(model) == 4  # 2 layers x (q, v)
    dropouts = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
                for d in m.lora_dropout.values()]
    assert dropouts and all(type(d) is FastDropout and d.p == 0.1 for d in dropouts)
