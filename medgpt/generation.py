"""Answering conversations with a chat model: stop handling, streamed single answers and batched answers.

Prompts are rendered by the same template the model was trained with, so generation sees exactly the training
format; answers end at the template's stop strings (or an extra one) and are cut there.
"""

from threading import Thread

import torch
from transformers import TextIteratorStreamer


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


def answer(
    lm, tokenizer, template, messages: list[dict], gen_kwargs: dict, stops: list[str], stream: bool = False
) -> str:
    """One answer to a conversation; with `stream` its tokens are printed as they come."""
    prompt = template.render(messages, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(lm.device)
    if not stream:
        with torch.no_grad():
            output = lm.generate(**inputs, **gen_kwargs)
        return cut_at_stop(
            tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True), stops
        )
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=lm.generate, kwargs={**inputs, **gen_kwargs, "streamer": streamer})
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        print(piece, end="", flush=True)
    thread.join()
    print()
    return cut_at_stop("".join(pieces), stops)


def answer_batch(
    lm, tokenizer, template, conversations: list[list[dict]], gen_kwargs: dict, stops: list[str]
) -> list[str]:
    """Answers to several conversations generated together (the tokenizer must pad on the left)."""
    prompts = [template.render(c, add_generation_prompt=True) for c in conversations]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
    with torch.no_grad():
        output = lm.generate(**inputs, **gen_kwargs)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stops) for ids in new_tokens]
