"""Section `judge`: the model answers each prompt (greedy), a judge model rates every answer against a rubric and,
with --judge_against, compares it with another model's answer to the same prompt, asked in both orders
(medgpt.evaluation.judge)."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgpt import data
from medgpt.errors import UserError
from medgpt.evaluation.judge import grade_figures, pairwise_figures, read_rubric
from medgpt.evaluation.prompts import prompt_rewards
from medgpt.evaluation.section import Context, Section, number
from medgpt.formats import RowError, normalize_prompt_row


@dataclass
class JudgeArguments:
    judge_file: str | None = field(
        default=None,
        metadata={"help": "Prompt rows (question + optional reference answer): answers rated by --judge_model."},
    )
    judge_rubric_file: str | None = field(
        default=None, metadata={"help": "A text file of the criteria the judge applies (default: a medical rubric)."}
    )
    judge_against: str | None = field(
        default=None,
        metadata={
            "help": "Another model's answers to the same prompts (inference.py's output, or evaluate_model.py's "
            "--output_file of a --judge_file run): pairwise, both orders."
        },
    )
    judge_max_new_tokens: int = field(default=256, metadata={"help": "Longest answer to a --judge_file prompt."})

    def __post_init__(self) -> None:
        if self.judge_max_new_tokens < 1:
            raise UserError(f"--judge_max_new_tokens {self.judge_max_new_tokens} is too small; use at least 1.")


def _question_and_answer(row: Any) -> tuple[str, str]:
    """(last user turn, answer) of an answer row: inference.py's {"Input", "Output"}, a chat ending in the answer,
    or {"prompt"/"question", "answer"}."""
    if isinstance(row, dict) and "Input" in row and "Output" in row:
        return str(row["Input"]), str(row["Output"])
    normalized = normalize_prompt_row(row)
    if not normalized["answer"]:
        raise RowError("answer", "no answer in this row (a final assistant turn, Output or answer)")
    return json.loads(normalized["prompt"])[-1]["content"], str(normalized["answer"])


def read_answers(path: str) -> dict[str, str]:
    """Question -> answer of another model: the JSON that evaluate_model.py --output_file wrote (its `judge`
    answers), or JSON lines of answer rows."""
    location = Path(path)
    if not location.is_file():
        raise UserError(f"--judge_against {path}: no such file; give another model's answers to the same prompts.")
    if location.suffix == ".json":
        try:
            report = json.loads(location.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg}).") from None
        answers = report.get("judge", {}).get("answers") if isinstance(report, dict) else None
        if not answers:
            raise UserError(f"--judge_against {path}: no `judge` answers in it; was it written with --judge_file?")
        return {a["prompt"]: a["answer"] for a in answers}
    found: dict[str, str] = {}
    for line, row in data.file_rows(location):
        try:
            if isinstance(row, RowError):
                raise row
            question, answer = _question_and_answer(row)
        except RowError as err:
            raise UserError(f"{path}:{line}: {err}") from None
        found[question] = answer
    return found


def prepare(args: JudgeArguments, engine_args: Any, eval_args: Any) -> dict:
    """The rubric and the other model's answers, read before any model is loaded: a bad file fails at once."""
    if not eval_args.judge_base_url:
        raise UserError("--judge_file needs a judge model: give --judge_base_url and --judge_model.")
    return {
        "rubric": read_rubric(args.judge_rubric_file),
        "against": args.judge_against and read_answers(args.judge_against),
    }


def run(context: Context, rows: list[dict], args: JudgeArguments, prepared: dict) -> dict:
    from medgpt.engine import ChatEngine

    engine = ChatEngine(context.model, context.tokenizer, context.template, context.engine_args.stop_str)
    size = context.eval_args.batch_size
    answers = prompt_rewards(engine, rows, {}, size, args.judge_max_new_tokens, progress=context.progress)["answers"]
    questions = [a["prompt"] for a in answers]
    ours = [a["answer"] for a in answers]
    references = [str(a["reference"] or "") for a in answers]
    grades = context.judge.grade(questions, ours, prepared["rubric"], references)
    figures: dict[str, Any] = {"rating": grade_figures(grades)}
    for answer, grade in zip(answers, grades, strict=True):
        answer.update(rating=grade)
        del answer["rewards"]
    if prepared["against"]:
        missing = [q for q in questions if q not in prepared["against"]]
        if missing:
            raise UserError(
                f"--judge_against {args.judge_against} has no answer to {len(missing)} of the {len(questions)} "
                f"prompts, e.g. {missing[0][:80]!r}; answer the same --judge_file with the other model."
            )
        theirs = [prepared["against"][q] for q in questions]
        verdicts = context.judge.compare(questions, ours, theirs, prepared["rubric"], references)
        figures["pairwise"] = {"against": args.judge_against, **pairwise_figures(verdicts)}
        for answer, other, (first, second) in zip(answers, theirs, verdicts, strict=True):
            answer.update(other_answer=other, verdict_model_first=first, verdict_model_second=second)
    return {**figures, "answers": answers}


def headline(figures: dict) -> list[tuple[str, str]]:
    def share(value: float | None) -> str:
        return "n/a" if value is None else number(value)

    rating = figures["rating"]
    lines = [("mean rating (1-10)", f"{share(rating['mean_rating'])} ({rating['graded']} of {rating['answers']})")]
    if pairwise := figures.get("pairwise"):
        lines += [
            ("win rate vs --judge_against", share(pairwise["win_rate"])),
            ("wins / losses / ties", f"{pairwise['wins']} / {pairwise['losses']} / {pairwise['ties']}"),
            ("orders disagreeing", str(pairwise["inconsistent"])),
        ]
    return lines


SECTION = Section("judge", JudgeArguments, "judge_file", "prompt", run, headline, prepare)
