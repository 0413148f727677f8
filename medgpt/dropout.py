"""LoRA dropout that is cheap on the CPU.

torch draws a CPU dropout mask with `bernoulli_` on one Mersenne-Twister stream: 8.6 ms for a 2048 x 576 input on
the 2-core machine, more than the 576 x 576 matrix product beside it and ~25x the LoRA product itself. LoRA puts a
dropout on the input of every adapted layer (seven per decoder layer, drawn again in the recompute under gradient
checkpointing), so in a CPU SFT step the masks took a fifth of the time (benchmarks/sft_profile.py).
`CpuFastDropout` takes raw 64-bit words from numpy's SFC64 generator and compares them 16 bits at a time into a
float mask that holds the 1 / (1 - p) scale too (1.4 ms; numpy's `integers` over the same range took 2.7 ms), so
applying it is one multiply forward and one backward (a multiply by the scale and a `where` took 4x that), and leaves
every other device to `nn.Dropout`. The backward keeps that float mask (4 bytes per input element instead of a 1-byte
boolean); under gradient checkpointing only for the layer being recomputed, and without checkpointing the GRPO
benchmark's peak stayed within 1% (8.07 GB after, 8.02 GB before, runs a day apart).

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
        count = inputs.numel()
        words = np.random.SFC64(seed).random_raw(-(-count // 4))  # four 16-bit draws per 64-bit word
        kept = np.empty(count, np.float32)
        np.greater_equal(words.view(np.uint16)[:count], threshold, out=kept, casting="unsafe")
        kept *= LEVELS / (LEVELS - threshold)  # the scale goes into the mask: one multiply forward, one backward
        return inputs * torch.from_numpy(kept).view(inputs.shape).to(inputs.dtype)


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
