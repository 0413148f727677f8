"""GRPO reward functions: a table of names, plus `package.module:function` for your own.

Every reward function has TRL GRPOTrainer's shape, `f(prompts, completions, **columns) -> list[float | None]`.
`completions` holds strings or conversational completions (`[{"role": "assistant", "content": ...}]`); the other
dataset columns arrive as keyword lists (`answer`: the reference text, "" when none; `options`: a JSON object
letter -> option text, "" when the row is not multiple choice), with `completion_ids` and `trainer_state`. A `None`
reward abstains for that sample, so TRL leaves it out of the sum (rows without a reference, free-text rows for
`choice_accuracy`, multiple-choice rows for `medical_accuracy`).

    funcs = build_reward_funcs(["medical_accuracy", "format"], RewardSettings())
    trainer = GRPOTrainer(model=..., reward_funcs=funcs, ...)   # logs rewards/medical_accuracy/mean, ...

Table (REWARD_FUNCTIONS):
  medical_accuracy  agreement with the reference answer in [0, 1]: negation-aware, numbers and units normalized,
                    a share only for an enumeration of candidates (medgpt.answers.agreement)
  choice_accuracy   1.0 when the chosen option(s) equal the reference letter(s), else 0.0 (answers.chosen_options)
  format            1.0 for one non-empty `<think>` block then one non-empty `<answer>` block (or
                    `--format_pattern`), else 0.0
  length_penalty    DAPO overlong penalty: 0, then linearly down to -1 over the last `--overlong_buffer` tokens
  reward_model      a trained reward model (`--reward_model_path`), scored by medgpt.scoring.RewardModelScorer
  triage            1.0 when the answer sends the patient to urgent care exactly when the row's `urgent` says so and
                    gives no dangerous dose, else 0.0; rows without `urgent` abstain (medgpt.triage)
MedicalGPT's names `accuracy`, `accuracy_reward` and `format_reward` are accepted as aliases.
"""

import difflib
import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medgpt.answers import (
    Completion,
    agreement,
    chosen_options,
    completion_text,
    final_answer,
    reference_options,
    think_answer_format,
    tokenize,
)
from medgpt.errors import UserError
from medgpt.triage import triage as triage_reward

logger = logging.getLogger(__name__)

RewardFunction = Callable[..., list[float | None]]


@dataclass
class RewardArguments:
    """The reward flags, declared once: grpo_training.py trains on them, evaluate_model.py's prompt section scores
    generated answers with them."""

    reward_funcs: list[str] = field(
        default_factory=lambda: ["medical_accuracy", "format"],
        metadata={"help": "Reward functions: names from medgpt.rewards, or package.module:function."},
    )
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model for `reward_model`."})
    format_pattern: str | None = field(
        default=None, metadata={"help": "Regex (full match, DOTALL) replacing the default think/answer format."}
    )
    overlong_buffer: int = field(default=64, metadata={"help": "length_penalty falls over the last N tokens."})


@dataclass
class RewardSettings:
    """The flags reward functions read; `build_reward_funcs` checks them."""

    format_pattern: str | None = None
    max_completion_length: int = 256
    overlong_buffer: int = 64
    reward_model_path: str | None = None
    device: str | None = None  # where a reward model runs (each process's own device under DDP)

    @classmethod
    def of(cls, flags: RewardArguments, max_completion_length: int, device: str | None) -> "RewardSettings":
        return cls(flags.format_pattern, max_completion_length, flags.overlong_buffer, flags.reward_model_path, device)


# ---------------------------------------------------------------- answer rewards (read by medgpt.answers)


def medical_accuracy(
    prompts: list, completions: list[Completion], answer: list[str], options: list | None = None, **kwargs: Any
) -> list[float | None]:
    """Reward: `answers.agreement` of each completion's final answer with the `answer` column, in [0, 1].

    Abstains (None) where the reference is empty or is option letters (choice_accuracy grades those rows).
    """
    options = options or [None] * len(completions)
    rewards: list[float | None] = []
    for completion, reference, row_options in zip(completions, answer, options, strict=True):
        if not tokenize(reference or "") or reference_options(reference, row_options) is not None:
            rewards.append(None)
        else:
            rewards.append(agreement(final_answer(completion_text(completion)), reference))
    return rewards


def choice_accuracy(
    prompts: list, completions: list[Completion], answer: list[str], options: list | None = None, **kwargs: Any
) -> list[float | None]:
    """Reward: 1.0 when the option(s) the final answer chooses equal the reference letters (any order), else 0.0.

    Abstains (None) where the `answer` column is not option letters.
    """
    options = options or [None] * len(completions)
    rewards: list[float | None] = []
    for completion, reference, row_options in zip(completions, answer, options, strict=True):
        expected = reference_options(reference, row_options)
        if expected is None:
            rewards.append(None)
        else:
            chosen = chosen_options(final_answer(completion_text(completion)), row_options)
            rewards.append(1.0 if chosen == expected else 0.0)
    return rewards


# ---------------------------------------------------------------- factories for the table

# Unlike MedicalGPT's pattern, whitespace between the blocks and multi-line reasoning are allowed; unlike a regex,
# the default also requires both blocks once and non-empty (answers.think_answer_format).
DEFAULT_FORMAT_PATTERN = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"


def _named(func: RewardFunction, name: str) -> RewardFunction:
    # TRL logs each reward as rewards/<__name__>/mean.
    func.__name__ = func.__qualname__ = name
    return func


def format_regex(settings: RewardSettings) -> re.Pattern:
    """The compiled `--format_pattern` (full match, DOTALL), or the default think-then-answer pattern."""
    pattern = settings.format_pattern or DEFAULT_FORMAT_PATTERN
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise UserError(
            f"--format_pattern {pattern!r} is not a valid regular expression ({err}); fix it, or leave it "
            f"out for the default '{DEFAULT_FORMAT_PATTERN}'."
        ) from err


def make_format(settings: RewardSettings) -> RewardFunction:
    """`format`: 1.0 for exactly one non-empty think block then one non-empty answer block (or a whole-completion
    match of --format_pattern), else 0.0."""
    regex = format_regex(settings)
    matches = regex.fullmatch if settings.format_pattern else think_answer_format

    def reward(prompts: list, completions: list[Completion], **kwargs: Any) -> list[float | None]:
        return [1.0 if matches(completion_text(completion)) else 0.0 for completion in completions]

    return _named(reward, "format")


def make_length_penalty(settings: RewardSettings) -> RewardFunction:
    """`length_penalty`: 0 up to max_completion_length - overlong_buffer tokens, then linearly down to -1."""
    limit, buffer = settings.max_completion_length, settings.overlong_buffer
    if not 0 < buffer <= limit:
        raise UserError(
            f"--overlong_buffer {buffer} must be between 1 and --max_completion_length ({limit}); the "
            "length penalty falls from 0 to -1 over the last --overlong_buffer tokens of a completion."
        )
    free = limit - buffer

    def reward(prompts: list, completions: list, completion_ids: list[list[int]], **kwargs: Any) -> list[float | None]:
        return [max(-1.0, min(0.0, (free - len(ids)) / buffer)) for ids in completion_ids]

    return _named(reward, "length_penalty")


def make_reward_model(settings: RewardSettings) -> RewardFunction:
    """`reward_model`: the reward model in `--reward_model_path` scores prompt + completion."""
    if not settings.reward_model_path:
        raise UserError(
            "the reward function reward_model needs a trained reward model: pass --reward_model_path "
            "DIR (the output_dir of reward_modeling.py), or drop reward_model from --reward_funcs."
        )
    from medgpt.scoring import RewardModelScorer  # imported here: it loads a model, other rewards need none of it

    return RewardModelScorer(settings.reward_model_path, device=settings.device)


REWARD_FUNCTIONS: dict[str, Callable[[RewardSettings], RewardFunction]] = {
    "medical_accuracy": lambda settings: medical_accuracy,
    "choice_accuracy": lambda settings: choice_accuracy,
    "format": make_format,
    "length_penalty": make_length_penalty,
    "reward_model": make_reward_model,
    "triage": lambda settings: triage_reward,
}
ALIASES = {"accuracy": "medical_accuracy", "accuracy_reward": "medical_accuracy", "format_reward": "format"}


def _import_reward(spec: str) -> RewardFunction:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(
            f"--reward_funcs {spec!r}: cannot import module {module_name!r} ({err}); check the spelling "
            "and run from the directory that holds it, or add that directory to PYTHONPATH."
        ) from err
    if not hasattr(module, attribute):
        raise UserError(
            f"--reward_funcs {spec!r}: module {module_name!r} has no attribute {attribute!r}; write "
            "package.module:function with a function that module defines."
        )
    func = getattr(module, attribute)
    if not callable(func):
        raise UserError(
            f"--reward_funcs {spec!r}: {attribute!r} is not callable (it is a {type(func).__name__}); point "
            "it at a function f(prompts, completions, **kwargs) -> list[float | None]."
        )
    return func


def _table_reward(name: str, settings: RewardSettings) -> RewardFunction:
    if name in ALIASES:
        logger.info("reward function %r is now called %r", name, ALIASES[name])
        name = ALIASES[name]
    if name not in REWARD_FUNCTIONS:
        known = [*REWARD_FUNCTIONS, *ALIASES]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        if "." in name:
            hint = "to import your own function write it as package.module:function (a colon before the name); "
        raise UserError(
            f"--reward_funcs {name!r} is not a known reward function; {hint}choose from "
            f"{', '.join(REWARD_FUNCTIONS)}, or give your own as package.module:function."
        )
    return REWARD_FUNCTIONS[name](settings)


def build_reward_funcs(names: list[str], settings: RewardSettings) -> list[RewardFunction]:
    """The reward callables for `--reward_funcs`: table names (or aliases) and `package.module:function` entries.

    Every problem (unknown name, failed import, missing --reward_model_path, bad --format_pattern) is reported at
    once in one UserError.
    """
    problems, funcs = [], []
    if not names:
        problems.append(f"--reward_funcs is empty; give at least one of {', '.join(REWARD_FUNCTIONS)}.")
    try:
        format_regex(settings)
    except UserError as err:
        problems.append(str(err))
    for name in names:
        try:
            funcs.append(_import_reward(name) if ":" in name else _table_reward(name, settings))
        except UserError as err:
            problems.append(str(err))
    if problems:
        raise UserError(" ".join(dict.fromkeys(problems)))  # a bad --format_pattern would otherwise appear twice
    return funcs
