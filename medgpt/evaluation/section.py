"""What an evaluation section is: its own flags, the rows it reads, its computation and its headline figures.

The runner (medgpt.evaluation.runner) and the report know nothing about any one section: they read the table in
medgpt.evaluation.sections.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medgpt.engine import EngineArguments


@dataclass
class Context:
    """What every section gets: the evaluated model (None for a reward model), its tokenizer and chat template,
    the flags of the model and of the run, the longest sequence the model takes, and the judge model if any."""

    model: Any
    tokenizer: Any
    template: Any
    kind: str  # "causal", or "reward" for a sequence classifier (a score head)
    engine_args: EngineArguments
    eval_args: Any  # medgpt.evaluation.runner.EvalArguments
    max_length: int
    progress: bool = True
    judge: Any = None  # a medgpt.evaluation.judge.Judge when --judge_base_url is given


@dataclass(frozen=True)
class Section:
    """One evaluation section.

    `arguments` is a dataclass of the section's own flags; its field `file_flag` names the rows file (the section
    runs when that flag is given). `run(context, rows, args, prepared)` returns the section's figures (JSON-ready);
    `headline(figures)` the (figure, value) pairs of the printed table. `prepare(args, engine_args, eval_args)` runs
    before any
    model is loaded (a bad flag fails at once) and its result reaches `run`. `check_row` may refuse a raw row with a
    RowError, reported as file:line. `read(args, eval_args)` reads the section's rows itself (default: the
    project's reader on the file flag, medgpt.evaluation.rows). `on_reward_model`: the section can run on a reward
    model too.
    """

    name: str
    arguments: type
    file_flag: str
    row_kind: str  # the row kind of medgpt.data's readers: "chat", "prompt", "preference", "text"
    run: Callable[[Context, list[dict], Any, Any], dict]
    headline: Callable[[dict], list[tuple[str, str]]]
    prepare: Callable[[Any, EngineArguments, Any], Any] | None = None
    check_row: Callable[[Any], Any] | None = None
    read: Callable[[Any, Any], list[dict]] | None = None
    on_reward_model: bool = False


def number(value: Any) -> str:
    """A figure as the table shows it."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
