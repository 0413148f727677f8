"""Generation settings shared by the chat engine (medgpt.engine) and the RL rollouts: which strings and tokens end an
answer, the `generate` keyword arguments, and cutting a decoded answer at its stop string."""


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
