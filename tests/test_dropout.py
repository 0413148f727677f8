"""CPU LoRA dropout: the masks have the asked rate and scale, follow torch's seed, are drawn again identically in the
recompute under gradient checkpointing, and every LoRA layer of a training model gets one."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from medgpt.args import LoraArguments
from medgpt.dropout import LEVELS, CpuFastDropout
from medgpt.model import add_lora


def test_masks_drop_at_the_asked_rate_and_keep_the_expectation():
    dropout = CpuFastDropout(0.05).train()
    out = dropout(torch.ones(1024, 1152))
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.05) < 2e-3  # ~10 standard deviations of a binomial over 1.2M draws
    kept_value = LEVELS / (LEVELS - round(0.05 * LEVELS))
    assert torch.all((out == 0) | (out == kept_value))
    assert abs(out.mean().item() - 1) < 3e-3
    assert not torch.equal(dropout(torch.ones(64, 64)), dropout(torch.ones(64, 64)))  # a new mask every call
    torch.manual_seed(7)
    first = dropout(torch.ones(64, 64))
    torch.manual_seed(7)
    assert torch.equal(dropout(torch.ones(64, 64)), first)  # torch's seed fixes the masks


def test_identity_where_nn_dropout_is_and_gradients_through_the_mask():
    x = torch.randn(8, 16, requires_grad=True)
    assert torch.equal(CpuFastDropout(0.3).eval()(x), x) and torch.equal(CpuFastDropout(0.0).train()(x), x)
    out = CpuFastDropout(0.3).train()(x)
    out.sum().backward()
    scale = LEVELS / (LEVELS - round(0.3 * LEVELS))
    torch.testing.assert_close(x.grad, (out != 0).float() * scale)  # the gradient is the mask, scaled
    assert CpuFastDropout(0.3).train()(torch.empty(4, 4, device="meta")).device.type == "meta"  # other devices


def _lora_gradients(model_dir, checkpointing: bool, seed: int) -> list[torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)  # the same LoRA initialisation each time
    model = add_lora(model, LoraArguments(lora_dropout=0.2), "causal", quantized=False, checkpointing=checkpointing)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.1)  # B starts at zero: make the adapter's path count
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.arange(3, 35).reshape(2, 16)
    torch.manual_seed(seed)
    model(input_ids=ids, labels=ids).loss.backward()
    return [p.grad for n, p in model.named_parameters() if p.requires_grad]


def test_lora_layers_get_it_and_checkpointing_redraws_the_same_masks(tiny_model_dir, monkeypatch):
    model = add_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraArguments(), "causal", False, checkpointing=False
    )
    lora_layers = [m for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)]
    assert lora_layers and all(isinstance(m.lora_dropout["default"], CpuFastDropout) for m in lora_layers)
    plain = _lora_gradients(tiny_model_dir, checkpointing=False, seed=1)
    # The recompute restores torch's generator, draws the same seeds and so the same masks: the same gradients.
    for got, want in zip(_lora_gradients(tiny_model_dir, checkpointing=True, seed=1), plain, strict=True):
        torch.testing.assert_close(got, want)
    other_seed = _lora_gradients(tiny_model_dir, checkpointing=False, seed=2)
    assert any(not torch.allclose(a, b) for a, b in zip(other_seed, plain, strict=True))  # the masks matter
    monkeypatch.setenv("MEDGPT_LORA_DROPOUT", "torch")
    model = add_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraArguments(), "causal", False, checkpointing=False
    )
    assert not any(isinstance(m, CpuFastDropout) for m in model.modules())


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_the_rate_is_p_rounded_to_sixteen_bits(p):
    out = CpuFastDropout(p).train()(torch.ones(512, 1024))
    assert abs((out == 0).float().mean().item() - round(p * LEVELS) / LEVELS) < 3e-3
