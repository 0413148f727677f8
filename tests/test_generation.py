"""Rollout generation: tokens drawn by inverse CDF from exactly softmax(logits / T), and a LoRA adapter merged into the
weights: the same function while merged, the exact base weights afterwards (the reference policy must not drift), and
no merge where merging would change the policy; batched decoding over weights packed for the batch size, and prompts
run ahead without their padding, compute the same answers."""

import pytest
import torch
from conftest import forward_shapes
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from medgpt.generation import (
    InverseCdfSampler,
    exact_sampling,
    lora_merged,
    packed_attention_mask,
    packed_for_batch,
    prefilled_without_padding,
)
from medgpt.shared_prefix import left_pad


def lora_model(model_dir, dtype: torch.dtype, attention: str = "sdpa"):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention)
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


def test_inverse_cdf_draws_follow_softmax_over_temperature():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, float("-inf"), -1.0]).log_softmax(0)
    rows = 40_000
    for temperature in (1.0, 0.5):
        scores = InverseCdfSampler(temperature)(None, logits.expand(rows, -1).clone())
        assert (scores.isfinite().sum(1) == 1).all() and (scores.max(1).values == 0).all()
        drawn = scores.argmax(1)
        frequency = torch.bincount(drawn, minlength=6).double() / rows
        expected = torch.softmax(logits.double() / temperature, 0)
        sigma = (expected * (1 - expected) / rows).sqrt()
        assert ((frequency - expected).abs() <= 5 * sigma + 1e-12).all(), (frequency, expected)
        assert frequency[4] == 0, "a token of probability 0 is never drawn"


def test_generate_with_exact_sampling_is_seeded_and_samples(tiny_model_dir):
    model = lora_model(tiny_model_dir, torch.float32)
    ids = torch.randint(3, 500, (2, 9))
    settings = {"max_new_tokens": 12, "min_new_tokens": 12, **exact_sampling(1.0)}
    with torch.no_grad():
        torch.manual_seed(3)
        first = model.generate(input_ids=ids, **settings)
        torch.manual_seed(3)
        again = model.generate(input_ids=ids, **settings)
        torch.manual_seed(4)
        other = model.generate(input_ids=ids, **settings)
        greedy = model.generate(input_ids=ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, greedy)


def greedy_with_logits(model, ids, **inputs):
    with torch.no_grad():
        settings = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
        out = model.generate(input_ids=ids, **settings, **inputs)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="MKL's packed GEMM is an x86 CPU build's")
def test_packed_decoding_gives_the_same_answers_and_leaves_training_alone(tiny_model_dir, monkeypatch):
    model = lora_model(tiny_model_dir, torch.float32)
    ids = torch.randint(3, 500, (4, 9))
    plain_ids, plain_logits = greedy_with_logits(model, ids)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    calls = []
    packed_op = torch.ops.mkl._mkl_linear
    monkeypatch.setattr(torch.ops.mkl, "_mkl_linear", lambda *args: calls.append(args[0].shape) or packed_op(*args))
    with lora_merged(model), packed_for_batch(model, 4) as packed:
        assert packed
        packed_ids, packed_logits = greedy_with_logits(model, ids)
    assert torch.equal(packed_ids, plain_ids)
    torch.testing.assert_close(packed_logits, plain_logits, atol=1e-5, rtol=1e-5)
    # Every weight the merged model reads (the head too) went through the packed GEMM at each of the 5 decode steps
    # after the prompt's, and only for 4 rows: the prompt's 4 x 9 rows took the plain one.
    assert len(calls) >= 5 * len([name for name in linears if "lora_" not in name])
    assert all(shape[:-1].numel() == 4 for shape in calls)
    assert not any("forward" in vars(m) for m in linears.values())  # restored

    # Training inside the block takes the plain matmul, whose backward exists: the same gradients.
    def adapter_gradients():
        model.zero_grad()
        model(input_ids=ids).logits.square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    plain_gradients = adapter_gradients()
    calls.clear()
    with packed_for_batch(model, 4):
        packed_gradients = adapter_gradients()
    assert packed_gradients.keys() == plain_gradients.keys()
    for name, gradient in packed_gradients.items():
        torch.testing.assert_close(gradient, plain_gradients[name], msg=name)
    assert not calls


def test_single_sequences_and_low_precision_are_not_packed(tiny_model_dir):
    model = lora_model(tiny_model_dir, torch.float32)
    with packed_for_batch(model, 1) as packed:
        assert not packed  # one row gains nothing from a packed weight
    half = lora_model(tiny_model_dir, torch.bfloat16)
    with packed_for_batch(half, 8) as packed:
        assert not packed
    assert not any("forward" in vars(m) for m in [*model.modules(), *half.modules()])


@pytest.mark.parametrize(
    ("shared", "budget", "attention"), [(0, 1024, "sdpa"), (10, 1024, "sdpa"), (10, 60, "sdpa"), (10, 1024, "eager")]
)
def test_prompts_run_ahead_without_padding_give_the_same_answers(
    tiny_model_dir, monkeypatch, shared, budget, attention
):
    """Rows of 1 to 150 tokens, left-padded to 150 (with a 10-token beginning all share, or none): the prompt pass
    runs the shared beginning once and the rows' own tokens but their last packed into one row (into several where
    they pass the budget of a pass), never a padded column; generate then decodes the same greedy tokens with the
    same logits as after the padded prompt pass, with either attention that takes the packed rows' mask."""
    monkeypatch.setattr("medgpt.generation.PACKED_TOKENS_PER_PASS", budget)
    model = lora_model(tiny_model_dir, torch.float32, attention)
    torch.manual_seed(1)
    beginning = torch.randint(3, 500, (shared,)).tolist()
    rows = [beginning + torch.randint(3, 500, (length,)).tolist() for length in (140, 3, 1, 40)] if shared else None
    rows = rows or [torch.randint(3, 500, (length,)).tolist() for length in (150, 3, 1, 40)]
    ids, mask = left_pad(rows, pad_id=0)
    padded_ids, padded_logits = greedy_with_logits(model, ids, attention_mask=mask)
    with forward_shapes(model) as shapes:
        cache = prefilled_without_padding(model, ids, mask)
    own = [len(row) - 1 - shared for row in rows]
    packed = [[139], [2, 39]] if budget == 60 else [[n for n in own if n]]  # 139 > 60 runs alone
    assert shapes == [(1, shared)] * bool(shared) + [(1, sum(group)) for group in packed], shapes
    assert cache.get_seq_length() == ids.shape[1] - 1
    ahead_ids, ahead_logits = greedy_with_logits(model, ids, attention_mask=mask, past_key_values=cache)
    assert torch.equal(ahead_ids, padded_ids)
    torch.testing.assert_close(ahead_logits, padded_logits, atol=1e-5, rtol=1e-5)


def test_packed_rows_see_the_shared_beginning_and_their_own_tokens_only():
    blocked = torch.finfo(torch.float32).min
    mask = packed_attention_mask([2, 1, 3], shared=2, dtype=torch.float32)
    seen = [
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 1, 1, 1],
    ]
    expected = torch.where(torch.tensor(seen, dtype=torch.bool), 0.0, blocked)[None, None]
    assert mask.shape == (1, 1, 6, 8) and mask.dtype == torch.float32
    assert torch.equal(mask, expected)
    assert packed_attention_mask([1, 1], shared=0, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_one_row_one_token_right_padded_barely_padded_and_flash_attention_prompts_run_padded(tiny_model_dir):
    model = lora_model(tiny_model_dir, torch.float32)
    ids, mask = left_pad([list(range(3, 3 + n)) for n in (17, 3, 1, 9)], pad_id=0)  # 38 padded positions, 1 pass ahead
    assert prefilled_without_padding(model, ids, mask) is None
    assert prefilled_without_padding(model, torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)) is None
    assert prefilled_without_padding(model, torch.tensor([[5], [6]]), torch.ones(2, 1, dtype=torch.long)) is None
    right = torch.tensor([[1, 1, 1], [1, 1, 0]])  # generate would go on from the second row's padding
    assert prefilled_without_padding(model, torch.tensor([[5, 6, 7], [5, 6, 0]]), right) is None
    wide, wide_mask = left_pad([list(range(3, 200)), [3, 4]], pad_id=0)
    assert prefilled_without_padding(model, wide, wide_mask) is not None
    model.config._attn_implementation = "flash_attention_2"  # takes no custom 4D mask
    assert prefilled_without_padding(model, wide, wide_mask) is None
