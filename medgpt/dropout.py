"""LoRA dropout that is cheap on the CPU.

torch draws a CPU dropout mask with `bernoulli_` on one Mersenne-Twister stream: 8.6 ms for a 2048 x 576 input on
the 2-core machine, more than the 576 x 576 matrix product beside it and ~25x the LoRA product itself. LoRA puts a
dropout on the input of every adapted layer (seven per decoder layer, drawn again in the recompute under gradient
checkpointing), so in a CPU SFT step the masks took a fifth of the time (benchmarks/sft_profile.py).
`CpuFastDropout` draws the same kind of mask from numpy's SFC64 generator in 16-bit steps (3.7 ms) and leaves every
other device to `nn.Dropout`.

Its seed is one draw from torch's CPU generator, so `torch.manual_seed` fixes the masks, and the recompute under
gradient checkpointing (which restores torch's generator state) draws the same seed and the same mask.
"""

import numpy as np
import torch
from torch import nn

# Masks are drawn as 16-bit integers: the drop probability is p rounded to a multiple of 1/65536 (0.05 -> 0.0500030),
# and kept values are scaled by the inverse of the rounded keep probability, so the expectation is exact.
LEVELS = 1 << 16


class CpuFastDropout(nn.Dropout):
    """`nn.Dropout(p)` with CPU masks from numpy's SFC64 generator (see the module docstring)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or inputs.device.type != "cpu" or self.p >= 1:
            return super().forward(inputs)
        threshold = round(self.p * LEVELS)
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        draws = np.random.Generator(np.random.SFC64(seed)).integers(0, LEVELS, inputs.shape, dtype=np.uint16)
        keep = torch.from_numpy(draws >= threshold)
        return torch.where(keep, inputs * (LEVELS / (LEVELS - threshold)), 0)


def use_cpu_fast_lora_dropout(model: nn.Module) -> int:
    """Swap the dropout of every LoRA layer of a PEFT `model` for CpuFastDropout with the same p; returns how many.
    Nothing changes on GPUs, where `nn.Dropout` draws its masks on the device."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout and dropout.p > 0:
                dropouts[name] = CpuFastDropout(dropout.p)
                swapped += 1
    return swapped
