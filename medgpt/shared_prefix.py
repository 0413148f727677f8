"""A beginning every prompt of a batch shares (the chat template's system turn, one --system_prompt for all rows) runs
through a model once instead of once per row.

The prefix [1, P] goes through the model alone; its keys and values are repeated for the B rows, and the rows' forward
starts after it. Autograd runs back through the repeat into the one prefix pass, so the gradients are those of B full
forwards (the prefix's share summed over the rows, as it is when every row runs it), and the outputs equal them up to
float rounding. PPO uses it in every forward of a step, and the reward scorer for every batch: on the 2-core CPU,
with MedicalGPT's GRPO system prompt (92 shared tokens of 109-132-token prompts, 128-token answers, 8 rows), PPO's
rollout forwards and update each take 1.36x less time (docs/performance.md).

Shapes: B rows, Lq prompt columns (left-padded: a row's real tokens are its last ones), P prefix tokens.
"""

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Below this the saving, (B - 1) x P token-forwards, is too small to be worth a second pass (on a GPU a pass over a
# few tokens costs its kernel launches whatever its size). Not tuned: the benchmark's prefix is 92 tokens.
MIN_SHARED_TOKENS = 8


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, L] of token lists padded on the left (generation continues on the right)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def shared_prefix_length(queries: torch.Tensor, query_mask: torch.Tensor) -> int:
    """How many leading real tokens every row of `queries` [B, Lq] (left-padded, `query_mask` [B, Lq]) has in common,
    leaving at least one of each row's own (its last prompt token predicts the answer's first)."""
    lengths = query_mask.sum(1)
    comparable = int(lengths.min()) - 1
    if queries.shape[0] < 2 or comparable < 1:
        return 0
    starts = queries.shape[1] - lengths
    columns = starts[:, None] + torch.arange(comparable, device=queries.device)[None]
    beginnings = queries.gather(1, columns)
    same = (beginnings == beginnings[:1]).all(0)
    return int(same.long().cumprod(0).sum())


def split_prompts(
    queries: torch.Tensor, query_mask: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prefix [1, P], rest [B, W], rest_mask [B, W]): the first `length` real tokens all rows share, and each row's
    tokens after them, still left-padded (W = the longest row's rest). Masked columns of `rest` keep whatever token
    they held; nothing attends to them."""
    starts = queries.shape[1] - query_mask.sum(1)
    first = int(starts.min()) + length  # the first column any row's rest occupies
    columns = torch.arange(queries.shape[1], device=queries.device)[None]
    rest_mask = (columns >= (starts + length)[:, None]).to(query_mask.dtype)
    start = int(starts[0])
    return queries[:1, start : start + length], queries[:, first:], rest_mask[:, first:]


def model_inputs(
    queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor, share_prefix: bool = True
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(prefix_ids [1, P] or None, {input_ids [B, L], attention_mask [B, P + L], position_ids [B, L]}) of left-padded
    prompts [B, Lq] followed by answers [B, T], every answer column attended to: the prompts' shared beginning split
    off (with `share_prefix`, where it is at least MIN_SHARED_TOKENS long), for forward_after_prefix."""
    prefix_ids, seen = None, query_mask
    length = shared_prefix_length(queries, query_mask) if share_prefix else 0
    if length >= MIN_SHARED_TOKENS:
        prefix_ids, queries, rest_mask = split_prompts(queries, query_mask, length)
        seen = torch.cat([rest_mask.new_ones(rest_mask.shape[0], length), rest_mask], dim=1)
    attention_mask = torch.cat([seen.long(), torch.ones_like(responses)], dim=1)
    input_ids = torch.cat([queries, responses], dim=1)
    # Positions count real tokens from the prompt's first, the prefix's included: the same as without the split.
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
    return prefix_ids, {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def supports_shared_prefix(model: nn.Module) -> bool:
    """Whether every layer of the model keeps all past keys and values (a sliding-window or recurrent layer would
    need its own cache handling; those models run every row in full)."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def forward_after_prefix(module: nn.Module, prefix_ids: torch.Tensor | None, **inputs):
    """`module(**inputs)` for rows that continue `prefix_ids` [1, P] (None: no shared prefix, a plain forward).

    inputs: input_ids [B, L] (the tokens after the prefix), attention_mask [B, P + L] (the prefix's columns
    included), position_ids [B, L] (counted from the prefix's start), and the module's own keywords (logits_to_keep
    for a causal LM, whose prefix pass then computes one logit only)."""
    if prefix_ids is None:
        return module(**inputs, use_cache=False)
    cache = DynamicCache(config=module.config)
    head = {"logits_to_keep": 1} if "logits_to_keep" in inputs else {}
    module(input_ids=prefix_ids, past_key_values=cache, use_cache=True, **head)
    cache.batch_repeat_interleave(inputs["input_ids"].shape[0])
    return module(**inputs, past_key_values=cache, use_cache=True)
