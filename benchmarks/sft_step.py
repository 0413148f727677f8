"""One SFT training step (forward and backward, gradient checkpointing) of the real model with each kind of LoRA
dropout, interleaved round by round in one process. On a noisy shared CPU, whole runs minutes apart swing by more
than such a change is worth (benchmarks/sft_speed.py: our own SFT took 53 to 115 s within a few hours); steps of one
loaded model taken in turn see the same machine. Prints every round's step seconds, the medians and the ratios;
asserts nothing.

    python benchmarks/sft_step.py                        # 6 rounds of 3 configurations, about 5 minutes on 2 cores
    python benchmarks/sft_step.py --rounds 10 --batch 4 --length 512
"""

import argparse
import statistics
import time

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from medgpt.args import LoraArguments
from medgpt.dropout import CpuFastDropout
from medgpt.model import add_lora

DEFAULT = "CpuFastDropout (default)"
# configuration -> the LoRA dropout module every adapted layer gets
CONFIGS = {DEFAULT: CpuFastDropout, "torch's nn.Dropout": nn.Dropout, "no dropout": lambda p: nn.Identity()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--lora_dropout", type=float, default=0.05)
    options = parser.parse_args()

    model = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32)
    lora = LoraArguments(target_modules="all", lora_rank=8, lora_alpha=16, lora_dropout=options.lora_dropout)
    model = add_lora(model, lora, "causal", quantized=False, checkpointing=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    dropouts = [m.lora_dropout for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)]
    shape = (options.batch, options.length)
    ids = torch.randint(100, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(0))
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for round_ in range(options.rounds):
        for name, make in CONFIGS.items():
            for modules in dropouts:
                modules["default"] = make(options.lora_dropout)
            started = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            seconds[name].append(time.perf_counter() - started)
            model.zero_grad()
        print(f"round {round_ + 1}: " + "  ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"\nmedians of {options.rounds} rounds ({options.batch} x {options.length} tokens, LoRA r8 on every linear)")
    for name, median in medians.items():
        slower = sum(ours < theirs for ours, theirs in zip(seconds[DEFAULT], seconds[name], strict=True))
        ratio = median / medians[DEFAULT]
        versus = "" if name == DEFAULT else f"   {ratio:.2f}x the default's time, slower in {slower} rounds"
        print(f"{name:<26} {median:6.2f} s/step{versus}")


if __name__ == "__main__":
    main()
