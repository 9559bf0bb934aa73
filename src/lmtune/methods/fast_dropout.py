"""LoRA dropout with cheap random masks on a CPU.

peft applies `nn.Dropout` to the input of every adapted layer, and torch draws one Bernoulli sample
per element with `bernoulli_`: on 2 CPU cores that was 31% of a LoRA step on SmolLM2 (3.7 ms per
call, seven calls per block). Here each element's keep/drop decision comes from 16 random bits, four
elements per 64-bit word: the mask is the same independent Bernoulli(1 - p) per element (the keep
probability is rounded to a multiple of 1/65536, under 1e-5 off).

The words come from numpy's SFC64 generator, seeded from torch's generator for each mask (so
set_seed and a resumed run's restored RNG state cover the masks): torch's own CPU generator
(mt19937, 64 bits in ~3.4 ns) took 11% of an SFT step; SFC64 draws them about 35% faster
(bench/dropout_masks.py). Splitting the draw over two threads gained nothing: torch's OpenMP threads
spin on the second core between operators. On a GPU the mask is drawn with torch's generator on
the device, and peft's modules keep torch's fused dropout.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        # A scaled 0/1 mask in x's dtype: multiplying by it (and by it again in the backward pass)
        # is cheaper here than torch.where on the boolean mask.
        scale = random_keep_mask(x.shape, 1.0 - self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * scale


def random_keep_mask(shape: torch.Size, keep: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask, True with probability `keep` (to 1/65536), independently per element."""
    if torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(keep)
    count = shape.numel()
    seed = int(torch.randint(2**62, ()))  # torch's RNG state decides the mask
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)
    lanes = torch.from_numpy(words.view(np.int16)[:count]).view(shape)  # uniform over [-32768, 32767]
    return lanes < round(keep * 65536) - 32768


def use_fast_dropout(model) -> int:
    """Swap every LoRA dropout module of a peft model for FastDropout; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, drop in dropouts.items():
            if type(drop) is nn.Dropout and drop.p > 0:
                dropouts[name] = FastDropout(drop.p)
                swapped += 1
    return swapped
