"""Section `chat`: perplexity over assistant tokens, the tokens SFT trains (answers and their stop strings)."""

import json
import math
from dataclasses import dataclass, field

from medgpt.errors import UserError
from medgpt.evaluation.loglik import sequence_logprobs
from medgpt.evaluation.section import Context, Section, number
from medgpt.tokenization import IGNORE_INDEX, encode_chat


@dataclass
class ChatPerplexityArguments:
    chat_file: str | None = field(
        default=None, metadata={"help": "Chat rows (ShareGPT/Alpaca/OpenAI), file or folder: assistant perplexity."}
    )


def chat_perplexity(
    model, tokenizer, template, rows: list[dict], batch_size: int = 8, max_length: int = 2048, progress: bool = True
) -> dict:
    """Perplexity = exp(total NLL / total assistant tokens), the tokens SFT trains (tokenization.encode_chat)."""
    sequences, too_long = [], 0
    for row in rows:
        tools = json.loads(row["tools"]) if row["tools"] else None
        ids, labels = encode_chat(tokenizer, template, json.loads(row["messages"]), tools, max_length)
        if not ids:
            too_long += 1  # the prompt alone fills max_length
            continue
        sequences.append((ids, [label != IGNORE_INDEX for label in labels]))
    scores = sequence_logprobs(model, sequences, batch_size, tokenizer.pad_token_id, "chat perplexity", progress)
    nll, tokens = -sum(s for s, _ in scores), sum(n for _, n in scores)
    if tokens == 0:
        raise UserError(f"--chat_file: no assistant token fits --max_length {max_length}; raise it.")
    return {
        "rows": len(sequences),
        "skipped_too_long": too_long,
        "tokens": tokens,
        "nll_per_token": nll / tokens,
        "perplexity": math.exp(nll / tokens) if nll / tokens < 50 else float("inf"),
    }


def run(context: Context, rows: list[dict], args: ChatPerplexityArguments, prepared: None) -> dict:
    return chat_perplexity(
        context.model,
        context.tokenizer,
        context.template,
        rows,
        context.eval_args.batch_size,
        context.max_length,
        context.progress,
    )


def headline(figures: dict) -> list[tuple[str, str]]:
    return [(name, number(figures[name])) for name in ("perplexity", "nll_per_token", "tokens", "rows")]


SECTION = Section("chat", ChatPerplexityArguments, "chat_file", "chat", run, headline)
