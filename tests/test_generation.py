"""Rollouts generated with a LoRA adapter merged into the weights: the same function while merged, the exact base
weights afterwards (the reference policy must not drift), and no merge where merging would change the policy."""

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from medgpt.generation import lora_merged


def lora_model(model_dir, dtype: torch.dtype):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # a trained adapter, not peft's zero start
            torch.nn.init.normal_(parameter, std=0.05)
    return model.eval()


def test_merged_generation_is_the_same_policy_and_leaves_the_base_exact(tiny_model_dir):
    model = lora_model(tiny_model_dir, torch.float32)
    ids = torch.randint(3, 500, (2, 9))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
    base = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}
    for _ in range(3):  # every rollout merges and restores again
        with lora_merged(model) as merged, torch.no_grad():
            assert merged and all(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))
            torch.testing.assert_close(model(input_ids=ids).logits, unmerged, atol=1e-5, rtol=1e-5)
            greedy = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert not any(getattr(layer, "merged", False) for layer in model.modules())
    for name, p in model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), f"{name} drifted: a subtraction's rounding left behind"
    with torch.no_grad():
        assert torch.equal(model.generate(input_ids=ids, max_new_tokens=6, do_sample=False), greedy)
        assert torch.equal(model(input_ids=ids).logits, unmerged)


def test_low_precision_and_plain_models_run_unmerged(tiny_model_dir):
    """In bfloat16 a small update rounds away into the base weight: merging would sample from another policy."""
    model = lora_model(tiny_model_dir, torch.bfloat16)
    with lora_merged(model) as merged:
        assert not merged and not any(getattr(layer, "merged", False) for layer in model.modules())
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with lora_merged(plain) as merged:
        assert not merged
