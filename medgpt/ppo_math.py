"""PPO maths as small pure functions over tensors (no models, no state), each tested on hand-computed values.

Shapes: B = rollouts in the batch, T = response tokens (padded). `mask` is a bool tensor [B, T] that is True on
the real response tokens: up to and including the stop token that ended the answer, False after it.
"""

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` [B, T] where `mask` [B, T] is True (over all, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries of `values` [B, T] (a scalar)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = masked_mean((values - mean) ** 2, mask)
    return variance * count / (count - 1) if count > 1 else variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`values` [B, T] scaled to unit variance over the masked entries (and to zero mean with `shift_mean`).
    Masked-out entries come back as 0."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(
    responses: torch.Tensor, stop_ids: list[int], pad_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, T], ended [B]) for generated `responses` [B, T]: tokens up to and including the first stop token
    are real. Without a stop token the answer ran to the length limit (ended False); trailing pad tokens that the
    generator appended after a multi-token stop string are not real either."""
    positions = torch.arange(responses.shape[1], device=responses.device).expand_as(responses)
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device))
    ended = is_stop.any(dim=1)
    first_stop = torch.where(ended, is_stop.int().argmax(dim=1), responses.shape[1] - 1)
    mask = positions <= first_stop.unsqueeze(1)
    if pad_id is not None and pad_id not in stop_ids:
        not_pad = responses != pad_id
        last_real = torch.where(not_pad.any(1), responses.shape[1] - 1 - not_pad.flip(1).int().argmax(1), -1)
        mask &= positions <= last_real.unsqueeze(1)
    return mask, ended


def answer_width(mask: torch.Tensor) -> int:
    """How many leading columns of the responses [B, T] hold a real token in some row: the longest answer's length
    (at least 1). The columns after it are masked in every row, so cutting them changes no reward, advantage or loss
    (everything here is masked, and a causal model's earlier positions never see them)."""
    return max(int(mask.sum(dim=1).max()), 1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of the last real token of each response (0 for an empty one)."""
    return (mask.sum(dim=1) - 1).clamp(min=0)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate [B, T] from the sampled tokens' log-probs [B, T].

    k1 = log p - log q (unbiased, can be negative per token); k3 = (q/p - 1) - log(q/p) (unbiased, always >= 0,
    lower variance). See http://joschu.net/blog/kl-approx.html."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Rewards [B, T]: the KL penalty -kl_coef * kl on every real token, plus the reward model's score [B] on the
    last real token of each response."""
    rewards = -kl_coef * kl * mask
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. rewards, values, mask: [B, T] -> (advantages [B, T], returns [B, T]).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where V after the last real
    token is 0 (the episode ends there). returns = advantages + values (the critic's targets)."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss (a scalar) from log-probs under the current and the rollout policy [B, T] and
    advantages [B, T]; also clipfrac, approxkl (0.5 * mean squared log-ratio) and the mean ratio."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2) (a scalar) with V_clipped kept within
    cliprange_value of the rollout's values; all inputs [B, T]. Also the fraction of clipped tokens."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)


class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. (2019): raised when the measured KL exceeds `target`, lowered when it
    is below, by at most 20% of the error per `horizon` rollouts. With target None it stays fixed."""

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n_rollouts: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_rollouts / self.horizon
