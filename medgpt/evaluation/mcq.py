"""Section `mcq`: multiple-choice accuracy, the option the model finds most likely as its answer."""

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from medgpt.errors import UserError
from medgpt.evaluation.loglik import answer_sequence, shared_prompt_logprobs
from medgpt.evaluation.section import Context, Section, number
from medgpt.formats import ANSWER_KEYS, RowError


@dataclass
class MultipleChoiceArguments:
    mcq_file: str | None = field(
        default=None, metadata={"help": 'Multiple choice rows {"question", "options", "answer"}: accuracy.'}
    )
    mcq_with_stop_token: bool = field(
        default=False,
        metadata={"help": "Also score the end-of-turn token after each option (default: the option text alone)."},
    )


def check_mcq_row(row: Any) -> Any:
    """A multiple-choice row must have options and an answer (MedQA's `answer_idx` is taken as the answer)."""
    if not isinstance(row, dict):
        return row  # the prompt reader names the problem
    if row.get("answer_idx") not in (None, ""):
        row = {**row, "answer": row["answer_idx"]}
    if row.get("options") in (None, "", [], {}):
        raise RowError("options", 'missing; multiple-choice rows need {"question", "options", "answer"}')
    chat = "messages" in row or "conversations" in row  # the final assistant turn is the answer
    if not chat and all(row.get(key) in (None, "") for key in ANSWER_KEYS):
        raise RowError("answer", 'missing; give the correct option letter, e.g. "answer": "C"')
    return row


def option_answer(text: str) -> dict:
    """The answer scored for one option: its text alone. With "C. text" the letter token decides, and small models
    carry a strong letter bias (SmolLM2-135M-Instruct chose "D" for 63 of data/eval/mcq's 80 questions: accuracy
    0.26; scoring the text alone: 0.41, with the four letters about equally often)."""
    return {"role": "assistant", "content": text}


def mcq_accuracy(
    model,
    tokenizer,
    template,
    rows: list[dict],
    max_length: int = 2048,
    progress: bool = True,
    with_stop: bool = False,
) -> dict:
    """The predicted option is the most likely answer `option_answer(text)` after the question (which lists the
    options as "A. text" lines), its text scored alone (with_stop: its end-of-turn token too). accuracy_sum
    compares summed log-probs; accuracy_norm (the headline `accuracy`) the mean log-prob per token, which does not
    favour short options. Rows with several correct letters are
    skipped and counted. The options of a question form one batch after their shared prompt (shared_prompt_logprobs).
    """
    groups, questions = [], []
    skipped: Counter = Counter()
    for row in rows:
        options = json.loads(row["options"]) if row["options"] else {}
        if len(row["answer"]) != 1 or not options:
            skipped["several correct letters" if len(row["answer"]) > 1 else "no answer or options"] += 1
            continue
        prompt, tools = json.loads(row["prompt"]), json.loads(row["tools"]) if row["tools"] else None
        groups.append(
            [
                answer_sequence(tokenizer, template, prompt, option_answer(text), tools, max_length, with_stop)
                for text in options.values()
            ]
        )
        questions.append((list(options), row["answer"]))
    if not questions:
        raise UserError(f"--mcq_file: no question with exactly one correct letter to score ({dict(skipped)}).")
    scores = shared_prompt_logprobs(model, groups, tokenizer.pad_token_id, "multiple choice", progress)
    predictions = []
    for (letters, answer), option_scores in zip(questions, scores, strict=True):
        best_sum = max(range(len(letters)), key=lambda i: option_scores[i][0])  # ties: the first option
        best_norm = max(range(len(letters)), key=lambda i: option_scores[i][0] / max(1, option_scores[i][1]))
        predictions.append({"answer": answer, "sum": letters[best_sum], "norm": letters[best_norm]})
    accuracy_sum = sum(p["sum"] == p["answer"] for p in predictions) / len(predictions)
    accuracy_norm = sum(p["norm"] == p["answer"] for p in predictions) / len(predictions)
    return {
        "questions": len(predictions),
        "accuracy": accuracy_norm,
        "accuracy_norm": accuracy_norm,
        "accuracy_sum": accuracy_sum,
        "scored": "option text and end-of-turn token" if with_stop else "option text alone",
        "skipped": dict(skipped),
        "predictions": predictions,
    }


def run(context: Context, rows: list[dict], args: MultipleChoiceArguments, prepared: None) -> dict:
    return mcq_accuracy(
        context.model,
        context.tokenizer,
        context.template,
        rows,
        context.max_length,
        context.progress,
        args.mcq_with_stop_token,
    )


def headline(figures: dict) -> list[tuple[str, str]]:
    return [
        ("accuracy (length-normalised)", number(figures["accuracy"])),
        ("accuracy_sum", number(figures["accuracy_sum"])),
        ("questions", number(figures["questions"])),
    ]


SECTION = Section("mcq", MultipleChoiceArguments, "mcq_file", "prompt", run, headline, check_row=check_mcq_row)
