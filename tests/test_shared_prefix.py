"""The prompts' shared beginning, found and split on hand-made rows, and a forward that runs it once giving the full
forward's outputs and gradients on the tiny model."""

import types

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig

from medgpt.shared_prefix import (
    MIN_SHARED_TOKENS,
    forward_after_prefix,
    left_pad,
    model_inputs,
    shared_prefix_length,
    split_prompts,
    supports_shared_prefix,
)

# Left-padded prompts of 4, 6 and 5 tokens (pad 0); all begin 5, 6, 7; rows 0 and 2 go on alike with 8.
QUERIES = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 1, 2], [0, 5, 6, 7, 8, 3]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])


def test_the_shared_beginning_is_found_and_leaves_every_row_a_token():
    assert shared_prefix_length(QUERIES, MASK) == 3
    assert shared_prefix_length(QUERIES[[0, 2]], MASK[[0, 2]]) == 3, "5 6 7 8 is row 0's whole prompt: one stays"
    assert shared_prefix_length(QUERIES[:1], MASK[:1]) == 0, "one row shares nothing with another"
    differing = QUERIES.clone()
    differing[1, 0] = 4
    assert shared_prefix_length(differing, MASK) == 0


def test_split_prompts_gives_the_prefix_and_each_rows_rest():
    prefix, rest, rest_mask = split_prompts(QUERIES, MASK, 3)
    assert prefix.tolist() == [[5, 6, 7]]
    assert rest_mask.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]
    assert [row[m.bool()].tolist() for row, m in zip(rest, rest_mask, strict=True)] == [[8], [9, 1, 2], [8, 3]]


def test_model_inputs_keep_every_real_tokens_position():
    responses = torch.tensor([[11, 12], [13, 14], [15, 16]])
    full_prefix, full = model_inputs(QUERIES, MASK, responses, share_prefix=False)
    assert full_prefix is None and torch.equal(full["input_ids"], torch.cat([QUERIES, responses], 1))
    assert full["position_ids"][1].tolist() == list(range(8))
    # A 3-token prefix is shorter than MIN_SHARED_TOKENS: not split off.
    assert model_inputs(QUERIES, MASK, responses)[0] is None
    long_queries, long_mask = left_pad(
        [[4] * MIN_SHARED_TOKENS + row[m.bool()].tolist() for row, m in zip(QUERIES, MASK, strict=True)], 0
    )
    prefix, shared = model_inputs(long_queries, long_mask, responses)
    _, unshared = model_inputs(long_queries, long_mask, responses, share_prefix=False)
    assert prefix.shape == (1, MIN_SHARED_TOKENS + 3)
    assert shared["attention_mask"].shape[1] == prefix.shape[1] + shared["input_ids"].shape[1]
    for row in range(3):  # the same real tokens at the same positions, the prefix's first
        real = shared["attention_mask"][row, prefix.shape[1] :].bool()
        full_real = unshared["attention_mask"][row].bool()
        tokens = torch.cat([prefix[0], shared["input_ids"][row][real]])
        assert torch.equal(tokens, unshared["input_ids"][row][full_real])
        positions = torch.cat([torch.arange(prefix.shape[1]), shared["position_ids"][row][real]])
        assert torch.equal(positions, unshared["position_ids"][row][full_real])


@pytest.fixture
def adapted_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),  # an adapter that changes outputs
    )
    return model.train()


def test_a_forward_after_the_prefix_equals_the_full_forward(adapted_model):
    """Logits of the answer positions, the backbone's hidden states and the adapter's gradients are those of the full
    forward: the prefix's keys and values reach every row, and its gradient is summed over them."""
    torch.manual_seed(1)
    system = torch.randint(5, 100, (1, MIN_SHARED_TOKENS + 4))
    own = [torch.randint(5, 100, (n,)) for n in (3, 7, 5)]
    width = system.shape[1] + 7
    queries = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, tokens in enumerate(own):
        prompt = torch.cat([system[0], tokens])
        queries[row, width - len(prompt) :], mask[row, width - len(prompt) :] = prompt, 1
    responses = torch.randint(5, 100, (3, 4))
    keep = responses.shape[1] + 1

    def run(share: bool):
        adapted_model.zero_grad()
        prefix, inputs = model_inputs(queries, mask, responses, share_prefix=share)
        assert (prefix is not None) == share
        logits = forward_after_prefix(adapted_model, prefix, **inputs, logits_to_keep=keep).logits
        backbone = adapted_model.get_base_model().model
        hidden = forward_after_prefix(backbone, prefix, **inputs).last_hidden_state[:, -keep:]
        (logits.square().mean() + hidden.square().mean()).backward()
        grads = {n: p.grad.clone() for n, p in adapted_model.named_parameters() if p.requires_grad}
        return logits.detach(), hidden.detach(), grads

    (logits, hidden, grads), (full_logits, full_hidden, full_grads) = run(True), run(False)
    assert torch.allclose(logits, full_logits, atol=1e-5), (logits - full_logits).abs().max()
    assert torch.allclose(hidden, full_hidden, atol=1e-5), (hidden - full_hidden).abs().max()
    assert grads.keys() == full_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        assert torch.allclose(grad, full_grads[name], atol=1e-6, rtol=1e-4), name


def test_sliding_window_models_run_every_row_in_full(tiny_model_dir):
    assert supports_shared_prefix(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert not supports_shared_prefix(types.SimpleNamespace(config=MistralConfig(sliding_window=16)))
