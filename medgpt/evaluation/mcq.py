"""Section `mcq`: multiple-choice accuracy, the option the model finds most likely as its answer.

Reads the project's rows and the benchmarks' own files (medgpt.evaluation.benchmarks: C-Eval, CMMLU, CMB, CMExam,
MedQA, MedMCQA, PubMedQA), zero-shot or with examples from a dev split, and reports accuracy per subject.
"""

import itertools
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from medgpt.answers import CJK
from medgpt.errors import UserError
from medgpt.evaluation import benchmarks
from medgpt.evaluation.loglik import answer_sequence, shared_prompt_logprobs
from medgpt.evaluation.rows import read_sources
from medgpt.evaluation.section import Context, Section, number
from medgpt.formats import ANSWER_KEYS, RowError

MAX_MULTI_OPTIONS = 6  # several correct letters: every non-empty subset is a candidate (63 for six options)
MULTI_INSTRUCTION = {
    "zh": "（多选题：回答所有正确选项的字母。）",
    "en": "(Several options may be correct: answer with the letters of all correct options.)",
}


@dataclass
class MultipleChoiceArguments:
    mcq_file: str | None = field(
        default=None,
        metadata={
            "help": 'Multiple choice: the project\'s rows {"question", "options", "answer"} or a benchmark\'s own '
            "files (C-Eval, CMMLU, CMB, CMExam, MedQA, MedMCQA, PubMedQA), a file or a folder: accuracy."
        },
    )
    mcq_format: Literal[benchmarks.FORMATS] = field(
        default="auto", metadata={"help": "The layout of --mcq_file (auto: told from each file's columns or keys)."}
    )
    mcq_subjects: str | None = field(
        default=None,
        metadata={"help": "Only these subjects, comma-separated (medical = C-Eval's and CMMLU's medical subjects)."},
    )
    mcq_cop_base: int | None = field(
        default=None,
        metadata={
            "help": "MedMCQA: `cop` counts options from 0 (hub copy) or 1 (release files); default: told "
            "from the values seen."
        },
    )
    num_fewshot: int = field(
        default=0, metadata={"help": "Answered examples from --mcq_dev_file before each question (same subject)."}
    )
    mcq_dev_file: str | None = field(
        default=None, metadata={"help": "The dev split the few-shot examples come from (any --mcq_file layout)."}
    )
    mcq_with_stop_token: bool = field(
        default=False,
        metadata={"help": "Also score the end-of-turn token after each option (default: the option text alone)."},
    )

    def __post_init__(self) -> None:
        if self.mcq_cop_base not in (None, 0, 1):
            raise UserError(f"--mcq_cop_base {self.mcq_cop_base}: use 0 (options counted from 0) or 1.")
        if self.num_fewshot < 0:
            raise UserError(f"--num_fewshot {self.num_fewshot}: use 0 (zero-shot) or more.")
        if self.num_fewshot and not self.mcq_dev_file:
            raise UserError(
                f"--num_fewshot {self.num_fewshot} needs --mcq_dev_file (the dev split the examples come from)."
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


def read_mcq(args: MultipleChoiceArguments, path: str, flag: str, skip_bad_rows: bool, limit: int | None) -> list:
    """Normalized multiple-choice rows of a file or folder in any layout of medgpt.evaluation.benchmarks, only the
    subjects asked for; a bad row is an error naming file:line (or skipped with --skip_bad_rows)."""
    files = [
        (file, *benchmarks.converted_rows(file, args.mcq_format, args.mcq_cop_base, flag))
        for file in benchmarks.benchmark_files(path, flag)
    ]
    wanted = benchmarks.wanted_subjects(args.mcq_subjects, {layout for _, layout, _ in files})
    sources, seen = [], set()
    for file, _, rows in files:
        subjects = {row.get("subject") for _, row in rows if isinstance(row, dict)}
        seen |= subjects
        if wanted is None:
            sources.append((str(file), iter(rows)))
        elif subjects & wanted:  # a bad row (a RowError) stays, so that it is still reported as file:line
            kept = [(n, row) for n, row in rows if not isinstance(row, dict) or row.get("subject") in wanted]
            sources.append((str(file), iter(kept)))
    if not sources:
        raise UserError(
            f"--mcq_subjects {args.mcq_subjects}: no such subject in --{flag} {path}; it holds "
            f"{', '.join(sorted(str(s) for s in seen)[:30])}."
        )
    return read_sources(sources, "prompt", flag, path, skip_bad_rows, limit, check_mcq_row)


def read(args: MultipleChoiceArguments, eval_args: Any) -> list[dict]:
    rows = read_mcq(args, args.mcq_file, "mcq_file", eval_args.skip_bad_rows, eval_args.max_samples)
    if args.num_fewshot:
        dev = read_mcq(args, args.mcq_dev_file, "mcq_dev_file", eval_args.skip_bad_rows, None)
        rows = with_fewshot(rows, dev, args.num_fewshot)
    return rows


def subject(row: dict) -> str | None:
    return json.loads(row["extra"]).get("subject") if row.get("extra") else None


def question_turns(row: dict) -> list[dict]:
    """The prompt of a row (its question listing the options); a question with several correct letters asks for
    the letters."""
    turns = json.loads(row["prompt"])
    if len(row["answer"]) > 1:
        last = turns[-1]["content"]
        wording = MULTI_INSTRUCTION["zh" if re.search(f"[{CJK}]", last) else "en"]
        turns[-1] = {**turns[-1], "content": f"{last}\n{wording}"}
    return turns


def correct_answer(row: dict) -> str:
    """What a few-shot example answers: the correct option's text (as scored), or the letters of several."""
    return json.loads(row["options"])[row["answer"]] if len(row["answer"]) == 1 else row["answer"]


def with_fewshot(rows: list[dict], dev_rows: list[dict], shots: int) -> list[dict]:
    """Each row with `shots` answered examples from the dev rows as earlier chat turns: the first ones of the same
    subject in file order (any subject where the dev split has none), never the question itself."""
    by_subject: dict[str | None, list[dict]] = defaultdict(list)
    for dev in dev_rows:
        if dev["answer"]:
            by_subject[subject(dev)].append(dev)
    answered = [dev for dev in dev_rows if dev["answer"]]
    result = []
    for row in rows:
        pool = by_subject.get(subject(row)) or answered
        turns: list[dict] = []
        for dev in [dev for dev in pool if dev["prompt"] != row["prompt"]][:shots]:
            turns += [t for t in question_turns(dev) if t["role"] != "system"]
            turns.append({"role": "assistant", "content": correct_answer(dev)})
        result.append({**row, "fewshot": json.dumps(turns, ensure_ascii=False)})
    return result


def candidates(options: dict[str, str], answer: str) -> list[tuple[str, dict]]:
    """(label, answer turn) of every answer scored: each option's text; with several correct letters, every
    non-empty set of letters ("AC")."""
    if len(answer) == 1:
        return [(letter, option_answer(text)) for letter, text in options.items()]
    sets = (
        "".join(letters) for size in range(1, len(options) + 1) for letters in itertools.combinations(options, size)
    )
    return [(letters, {"role": "assistant", "content": letters}) for letters in sets]


def _accuracy(predictions: list[dict]) -> dict:
    return {
        "questions": len(predictions),
        "accuracy": sum(p["norm"] == p["answer"] for p in predictions) / len(predictions),
        "accuracy_sum": sum(p["sum"] == p["answer"] for p in predictions) / len(predictions),
    }


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
    options as "A. text" lines, after any few-shot examples), its text scored alone (with_stop: its end-of-turn
    token too). accuracy_sum compares summed log-probs; accuracy_norm (the headline `accuracy`) the mean log-prob
    per token, which does not favour short options. A question with several correct letters is right when the most
    likely set of letters is exactly them (`candidates`). The answers of a question form one batch after their
    shared prompt (shared_prompt_logprobs). Accuracy per subject where the rows name one.
    """
    groups, questions = [], []
    skipped: Counter = Counter()
    for row in rows:
        options = json.loads(row["options"]) if row["options"] else {}
        if not row["answer"] or not options:
            skipped["no answer or options"] += 1
            continue
        if len(row["answer"]) > 1 and len(options) > MAX_MULTI_OPTIONS:
            skipped[f"several correct letters among more than {MAX_MULTI_OPTIONS} options"] += 1
            continue
        prompt, tools = question_turns(row), json.loads(row["tools"]) if row["tools"] else None
        if row.get("fewshot"):
            at = 1 if prompt[0]["role"] == "system" else 0
            prompt[at:at] = json.loads(row["fewshot"])
        answers = candidates(options, row["answer"])
        groups.append(
            [answer_sequence(tokenizer, template, prompt, turn, tools, max_length, with_stop) for _, turn in answers]
        )
        questions.append(([label for label, _ in answers], row["answer"], subject(row)))
    if not questions:
        raise UserError(f"--mcq_file: no question with an answer and options to score ({dict(skipped)}).")
    scores = shared_prompt_logprobs(model, groups, tokenizer.pad_token_id, "multiple choice", progress)
    predictions = []
    for (labels, answer, name), option_scores in zip(questions, scores, strict=True):
        best_sum = max(range(len(labels)), key=lambda i: option_scores[i][0])  # ties: the first option
        best_norm = max(range(len(labels)), key=lambda i: option_scores[i][0] / max(1, option_scores[i][1]))
        prediction = {
            "answer": answer,
            "sum": labels[best_sum],
            "norm": labels[best_norm],
            "logprobs": {label: round(score[0], 5) for label, score in zip(labels, option_scores, strict=True)},
        }
        predictions.append(prediction if name is None else {**prediction, "subject": name})
    figures = _accuracy(predictions)
    results = {**figures, "accuracy_norm": figures["accuracy"]}
    if multiple := [p for p in predictions if len(p["answer"]) > 1]:
        results["several_correct"] = _accuracy(multiple)
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for prediction in predictions:
        if "subject" in prediction:
            by_subject[prediction["subject"]].append(prediction)
    if by_subject:
        results["by_subject"] = {name: _accuracy(found) for name, found in sorted(by_subject.items())}
    fewshot = sum(bool(row.get("fewshot")) for row in rows)
    return {
        **results,
        "scored": "option text and end-of-turn token" if with_stop else "option text alone",
        "fewshot_questions": fewshot,
        "skipped": dict(skipped),
        "predictions": predictions,
    }


def run(context: Context, rows: list[dict], args: MultipleChoiceArguments, prepared: None) -> dict:
    figures = mcq_accuracy(
        context.model,
        context.tokenizer,
        context.template,
        rows,
        context.max_length,
        context.progress,
        args.mcq_with_stop_token,
    )
    return {**figures, "num_fewshot": args.num_fewshot}


def headline(figures: dict) -> list[tuple[str, str]]:
    lines = [
        ("accuracy (length-normalised)", number(figures["accuracy"])),
        ("accuracy_sum", number(figures["accuracy_sum"])),
        ("questions", number(figures["questions"])),
    ]
    if "several_correct" in figures:
        lines.append(("several correct: accuracy", number(figures["several_correct"]["accuracy"])))
    if len(subjects := figures.get("by_subject", {})) > 1:
        lines += [(f"  {name} ({found['questions']})", number(found["accuracy"])) for name, found in subjects.items()]
    return lines


SECTION = Section(
    "mcq", MultipleChoiceArguments, "mcq_file", "prompt", run, headline, check_row=check_mcq_row, read=read
)
