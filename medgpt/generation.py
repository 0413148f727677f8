"""Generation settings shared by the chat engine (medgpt.engine) and the RL rollouts: which strings and tokens end an
answer, the `generate` keyword arguments, cutting a decoded answer at its stop string, and rollouts sampled from
exactly the distribution whose log-probs RL computes."""

import contextlib
from collections.abc import Iterator

from transformers import GenerationConfig


def stop_strings(template, extra: str = "") -> list[str]:
    return [s for s in (*template.stop_words, extra) if s]


def stop_tokens(tokenizer, stops: list[str]) -> tuple[list[int], list[str]]:
    """(ids of the stops that are single tokens, plus eos; the stops that take several tokens)."""
    vocab = tokenizer.get_vocab()
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(s) for s in stops if s in vocab} | {tokenizer.eos_token_id})
    return stop_ids, [s for s in stops if s not in vocab]


def generation_kwargs(
    tokenizer, stops: list[str], max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
) -> dict:
    """`generate` settings: single-token stops end generation as eos ids, longer ones as stop strings;
    temperature 0 means greedy decoding."""
    stop_ids, multi_token_stops = stop_tokens(tokenizer, stops)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {
        "max_new_tokens": max_new_tokens,
        "repetition_penalty": repetition_penalty,
        "eos_token_id": stop_ids,
        "pad_token_id": tokenizer.pad_token_id,
        **(sampling if temperature > 0 else {"do_sample": False}),
        **({"stop_strings": multi_token_stops, "tokenizer": tokenizer} if multi_token_stops else {}),
    }


def cut_at_stop(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


@contextlib.contextmanager
def sampling_exactly_as_given(model) -> Iterator[None]:
    """Within this block `model.generate` samples with the settings passed to it and nothing else.

    transformers fills every setting a `generate` call leaves unset from the checkpoint's generation_config.json: a
    shipped repetition penalty, top-k, top-p, min-p, n-gram ban or suppressed tokens (Qwen2.5-Instruct ships
    repetition_penalty 1.05 and top_k 20) would reshape the sampling distribution while PPO and GRPO compute the
    answers' log-probs from logits / temperature alone, which is off-policy without correction. The checkpoint's
    config is set aside (only its token ids kept) and restored afterwards, so saved models keep it.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id,
        eos_token_id=saved.eos_token_id,
        pad_token_id=saved.pad_token_id,
        decoder_start_token_id=saved.decoder_start_token_id,
    )
    try:
        yield
    finally:
        base.generation_config = saved
