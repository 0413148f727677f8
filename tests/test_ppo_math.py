"""PPO maths on hand-computed tensors: masks, KL, token rewards, GAE, whitening, clipped losses, adaptive KL."""

import math

import pytest
import torch

from medgpt import ppo_math

T, F = True, False


def close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-4, rtol=1e-4)


def test_response_mask_ends_at_the_first_stop_token_and_masks_what_follows():
    responses = torch.tensor([[5, 7, 2, 9, 2], [5, 5, 5, 5, 5]])
    mask, ended = ppo_math.response_mask(responses, stop_ids=[2], pad_id=0)
    assert mask.tolist() == [[T, T, T, F, F], [T, T, T, T, T]]
    assert ended.tolist() == [True, False]


def test_response_mask_drops_trailing_padding_after_a_multi_token_stop():
    mask, ended = ppo_math.response_mask(torch.tensor([[5, 6, 0, 0, 0]]), stop_ids=[2], pad_id=0)
    assert mask.tolist() == [[T, T, F, F, F]] and ended.tolist() == [False]
    # When pad is the stop token (eos as pad), the first one ends the answer and is kept.
    mask, ended = ppo_math.response_mask(torch.tensor([[5, 2, 2, 2]]), stop_ids=[2], pad_id=2)
    assert mask.tolist() == [[T, T, F, F]] and ended.tolist() == [True]


def test_cutting_the_columns_after_the_longest_answer_changes_no_advantage_or_loss():
    """PPO cuts the responses to answer_width before its forwards: on the columns it keeps, rewards, advantages,
    returns and both losses equal those of the uncut rollout, whatever the cut columns held."""
    torch.manual_seed(0)
    mask = torch.tensor([[T, T, F, F, F, F], [T, T, T, F, F, F], [T, F, F, F, F, F]])
    assert ppo_math.answer_width(mask) == 3
    assert ppo_math.answer_width(torch.zeros(2, 4, dtype=torch.bool)) == 1  # an empty rollout keeps one column
    logprobs, old, ref, values, old_values = (torch.randn(3, 6) for _ in range(5))
    scores = torch.tensor([1.0, -0.5, 2.0])

    def statistics(width: int) -> list[torch.Tensor]:
        m, cut = mask[:, :width], (lambda x: x[:, :width])
        rewards = ppo_math.token_rewards(scores, ppo_math.kl_estimate(cut(old), cut(ref)) * m, m, kl_coef=0.1)
        advantages, returns = ppo_math.gae(rewards, cut(old_values), m, gamma=0.99, lam=0.95)
        advantages = ppo_math.masked_whiten(advantages, m)
        policy, _ = ppo_math.policy_loss(cut(logprobs), cut(old), advantages, m, cliprange=0.2)
        value, _ = ppo_math.value_loss(cut(values), cut(old_values), returns, m, cliprange_value=0.2)
        return [rewards, advantages, returns, policy, value]

    for whole, cut in zip(statistics(6), statistics(3), strict=True):
        torch.testing.assert_close(whole[:, :3] if whole.dim() else whole, cut)


def test_kl_estimators():
    logprobs, ref_logprobs = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    close(ppo_math.kl_estimate(logprobs, ref_logprobs, "k1"), [[0.5, 0.0]])
    close(ppo_math.kl_estimate(logprobs, ref_logprobs, "k3"), [[math.exp(-0.5) - 1 + 0.5, 0.0]])
    with pytest.raises(ValueError, match="k1 or k3"):
        ppo_math.kl_estimate(logprobs, ref_logprobs, "k2")


def test_score_lands_on_the_last_real_token_after_the_kl_penalty():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.1, 0.1]])
    mask = torch.tensor([[T, T, F], [T, T, T]])
    rewards = ppo_math.token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    close(rewards, [[-0.05, -0.1 + 1.0, 0.0], [-0.05, -0.05, -0.05 + 2.0]])
    assert ppo_math.last_token_index(mask).tolist() == [1, 2]


def test_gae_by_hand():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(advantages, [[0.5, 0.5, 0.5]])
    close(returns, [[1.0, 1.0, 1.0]])
    # gamma 0.9, lambda 0.5: delta = [-0.05, -0.05, 0.5]; A2 = 0.5, A1 = -0.05 + 0.45 * 0.5, A0 = -0.05 + 0.45 * A1
    advantages, _ = ppo_math.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(advantages, [[-0.05 + 0.45 * 0.175, 0.175, 0.5]])


def test_gae_ignores_everything_after_the_answer():
    rewards, values = torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.5, 0.5, 9.0]])
    advantages, returns = ppo_math.gae(rewards, values, torch.tensor([[T, T, F]]), gamma=1.0, lam=1.0)
    close(advantages, [[0.5, 0.5, 0.0]])
    close(returns, [[1.0, 1.0, 0.0]])


def test_masked_whiten():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    mask = torch.tensor([[T, T, T, T, F]])
    std = math.sqrt(5 / 3)  # unbiased variance of 1..4
    close(ppo_math.masked_whiten(values, mask), [[-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std, 0.0]])
    close(
        ppo_math.masked_whiten(values, mask, shift_mean=False), [[(v - 2.5) / std + 2.5 for v in (1, 2, 3, 4)] + [0]]
    )
    close(ppo_math.masked_mean(values, mask), 2.5)


def test_clipped_policy_loss():
    old = torch.zeros(1, 2)
    logprobs = torch.log(torch.tensor([[1.5, 0.5]]))
    advantages = torch.tensor([[1.0, -1.0]])
    loss, stats = ppo_math.policy_loss(logprobs, old, advantages, torch.ones(1, 2, dtype=torch.bool), cliprange=0.2)
    # ratio 1.5, A=1: max(-1.5, -1.2) = -1.2; ratio 0.5, A=-1: max(0.5, 0.8) = 0.8; both clipped
    close(loss, -0.2)
    close(stats["clipfrac"], 1.0)
    close(stats["approxkl"], 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)
    close(stats["ratio"], 1.0)
    inside, stats = ppo_math.policy_loss(
        torch.log(torch.tensor([[1.1, 9.0]])), old, torch.tensor([[2.0, 7.0]]), torch.tensor([[T, F]]), 0.2
    )
    close(inside, -2.2)  # within the clip range the loss is -A * ratio; the masked token does not count
    close(stats["clipfrac"], 0.0)


def test_clipped_value_loss():
    loss, clipfrac = ppo_math.value_loss(
        torch.tensor([[1.0, 0.1]]),
        torch.zeros(1, 2),
        torch.tensor([[2.0, 0.1]]),
        torch.ones(1, 2, dtype=torch.bool),
        0.2,
    )
    # token 0: V clipped to 0.2, max((1-2)^2, (0.2-2)^2) = 3.24; token 1: 0
    close(loss, 0.5 * 3.24 / 2)
    close(clipfrac, 0.5)


def test_policy_loss_gradient_pushes_towards_positive_advantages():
    logprobs = torch.zeros(1, 2, requires_grad=True)
    loss, _ = ppo_math.policy_loss(
        logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool), 0.2
    )
    loss.backward()
    assert logprobs.grad[0, 0] < 0 < logprobs.grad[0, 1]  # gradient descent raises token 0, lowers token 1


def test_adaptive_kl_controller():
    fixed = ppo_math.AdaptiveKLController(0.1)
    fixed.update(kl=50.0, n_rollouts=100)
    assert fixed.value == 0.1
    adaptive = ppo_math.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    adaptive.update(kl=12.0, n_rollouts=100)  # error clipped to +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    adaptive.update(kl=5.4, n_rollouts=100)  # error -0.1
    assert adaptive.value == pytest.approx(0.1 * 1.002 * (1 - 0.1 * 100 / 10000))
