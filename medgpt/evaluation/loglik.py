"""Log-likelihoods of scored tokens, batched so that each result equals a forward of that sequence alone."""

import os

import torch
from tqdm import tqdm

from medgpt.chat import split_answer
from medgpt.tokenization import encode_segments

Sequence = tuple[list[int], list[bool]]  # token ids, and whether each token is scored


def answer_sequence(
    tokenizer,
    template,
    prompt: list[dict],
    answer: dict,
    tools: list | None,
    max_length: int,
    with_stop: bool = True,
):
    """Token ids of prompt + answer rendered with the template, scored where the answer and its stop string are
    (the part DPO and SFT train). with_stop=False scores the answer's text alone and ends the sequence there, as
    multiple-choice scoring in the field does (the stop token measures "would the model end here", not "is this
    right"). Longer than max_length: the oldest prompt tokens are dropped."""
    prompt_text, answer_text = split_answer(template, prompt, answer, tools)
    if with_stop:
        segments = [(prompt_text, False), (answer_text, True)]
    else:
        content = answer["content"].strip()
        start = answer_text.find(content)
        if not content or start < 0:  # a template that rewrites the text: score what it wrote, stop included
            segments = [(prompt_text, False), (answer_text, True)]
        else:
            segments = [(prompt_text + answer_text[:start], False), (content, True)]
    ids, scored, _ = encode_segments(tokenizer, segments)
    return ids[-max_length:], scored[-max_length:]


def _pad(sequences: list[Sequence], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and scored flags of a batch."""
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    scored = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (tokens, flags) in enumerate(sequences):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
        scored[row, : len(tokens)] = torch.tensor(flags, dtype=torch.bool)
    return ids, mask, scored


def _sum_logprobs(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> list[tuple[float, int]]:
    """Per row: the sum of log p(targets) where `keep`, and how many; logits[:, j] predicts targets[:, j]."""
    targets, keep = targets.to(logits.device), keep.to(logits.device)
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    token_logprobs = torch.where(keep, chosen - logits.float().logsumexp(-1), 0.0)
    return [(float(total), int(count)) for total, count in zip(token_logprobs.sum(1), keep.sum(1), strict=True)]


@torch.no_grad()
def sequence_logprobs(
    model, sequences: list[Sequence], batch_size: int, pad_id: int, desc: str = "scoring", progress: bool = True
) -> list[tuple[float, int]]:
    """(sum of log p(token | the tokens before it), number of tokens) over each sequence's scored tokens.

    Sequences go longest first in right-padded batches with an attention mask, so each result equals a forward of
    that sequence alone. Logits are computed only from the first scored position of a batch on (`logits_to_keep`).
    """
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    bar = tqdm(total=len(sequences), desc=desc, unit="seq", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask, scored = _pad([sequences[i] for i in chunk], pad_id)
        scored[:, 0] = False  # the first token has no context to predict it from
        if scored.any():
            first = int(scored.any(0).nonzero()[0])  # earliest scored position in the batch
            device = model.device
            keep = ids.shape[1] - first + 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
            for index, result in zip(
                chunk, _sum_logprobs(logits[:, :-1], ids[:, first:], scored[:, first:]), strict=True
            ):
                results[index] = result
        bar.update(len(chunk))
    bar.close()
    return results


@torch.no_grad()
def shared_prompt_logprobs(
    model, groups: list[list[Sequence]], pad_id: int, desc: str = "scoring", progress: bool = True
) -> list[list[tuple[float, int]]]:
    """`sequence_logprobs` of groups of sequences that share a prompt (the options of one question): the shared
    tokens run once and their KV cache serves every sequence of the group, which then runs as one padded batch."""
    results = []
    bar = tqdm(total=sum(len(g) for g in groups), desc=desc, unit="seq", disable=not progress)
    for group in groups:
        shared = len(os.path.commonprefix([ids for ids, _ in group])) if len(group) > 1 else 0
        first_scored = min((flags.index(True) for _, flags in group if True in flags), default=0)
        prefix = min(shared, first_scored) - 1  # the last shared token runs with each option: it predicts the first
        if prefix < 1:
            results.append(sequence_logprobs(model, group, len(group), pad_id, progress=False))
        else:
            ids, mask, scored = _pad([(ids[prefix:], flags[prefix:]) for ids, flags in group], pad_id)
            device = model.device
            prompt = model(input_ids=torch.tensor([group[0][0][:prefix]], device=device), logits_to_keep=1)
            cache = prompt.past_key_values
            cache.batch_repeat_interleave(len(group))  # one copy of the prompt's keys and values per sequence
            mask = torch.cat([torch.ones((len(group), prefix), dtype=torch.long), mask], dim=1)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache).logits
            results.append(_sum_logprobs(logits[:, :-1], ids[:, 1:], scored[:, 1:]))
        bar.update(len(group))
    bar.close()
    return results
