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
  medical_accuracy  token-overlap F1 with the reference answer, Chinese and English, in [0, 1]
  choice_accuracy   1.0 when the chosen option letter(s) equal the reference letter(s), else 0.0
  format            1.0 for `<think>...</think><answer>...</answer>` (or `--format_pattern`), else 0.0
  length_penalty    DAPO overlong penalty: 0, then linearly down to -1 over the last `--overlong_buffer` tokens
  reward_model      a trained reward model (`--reward_model_path`), scored by medgpt.scoring.RewardModelScorer
MedicalGPT's names `accuracy`, `accuracy_reward` and `format_reward` are accepted as aliases.
"""

import difflib
import importlib
import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medgpt.errors import UserError

logger = logging.getLogger(__name__)

RewardFunction = Callable[..., list[float | None]]
Completion = str | list[dict[str, Any]]


@dataclass
class RewardSettings:
    """The flags reward functions read; `build_reward_funcs` checks them."""

    format_pattern: str | None = None
    max_completion_length: int = 256
    overlong_buffer: int = 64
    reward_model_path: str | None = None
    device: str | None = None  # where a reward model runs (each process's own device under DDP)


# ---------------------------------------------------------------- completion text


def completion_text(completion: Completion) -> str:
    """The text of a completion: the string itself, or the content of the last assistant message."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role", "assistant") == "assistant":
            content = message.get("content") or ""
            if isinstance(content, list):  # multimodal content parts: keep the text ones
                return "".join(part.get("text", "") for part in content if part.get("type") == "text")
            return content
    return ""


ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def answer_part(text: str) -> str:
    """The final answer in a completion: the last `<answer>` block, else the text without its `<think>` block."""
    if "</think>" in text:
        # Everything up to the last </think> is reasoning; this also covers chat templates that open <think> in the
        # prompt, so the completion starts inside the reasoning.
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        text = text.split("<think>", 1)[0]  # the reasoning was cut off: only what came before it is an answer
    blocks = ANSWER_BLOCK.findall(text)
    if blocks:
        return blocks[-1].strip()
    return re.sub(r"</?answer>", "", text).strip()  # an <answer> block cut off by the length limit


# ---------------------------------------------------------------- medical_accuracy: free-text overlap

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# One token per CJK character (Chinese has no spaces), one per Latin word or number ("3.5" stays whole);
# punctuation and whitespace are no tokens.
TOKEN = re.compile(rf"[{CJK}]|[^\W_{CJK}]+(?:\.\d+)*")


def tokenize(text: str) -> list[str]:
    """Lowercase tokens for overlap scoring: single CJK characters, Latin words and numbers, no punctuation."""
    return TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def _f1(predicted: list, reference: list) -> float:
    overlap = sum((Counter(predicted) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def _bigrams(tokens: list[str]) -> list[tuple[str, str]]:
    return list(zip(tokens, tokens[1:], strict=False))


def overlap_score(answer: str, reference: str) -> float:
    """Graded agreement of an answer with a reference in [0, 1]; 1.0 when the reference appears in the answer.

    The mean of token F1 and token-bigram F1: single characters alone overlap a lot between any two Chinese medical
    texts, bigrams reward getting the terms (肋间, 正中线) right and in order.
    """
    reference_tokens, answer_tokens = tokenize(reference), tokenize(answer)
    if not reference_tokens or not answer_tokens:
        return 0.0
    if f" {' '.join(reference_tokens)} " in f" {' '.join(answer_tokens)} ":
        return 1.0
    unigram = _f1(answer_tokens, reference_tokens)
    if len(reference_tokens) == 1:
        return unigram
    return (unigram + _f1(_bigrams(answer_tokens), _bigrams(reference_tokens))) / 2


def medical_accuracy(
    prompts: list, completions: list[Completion], answer: list[str], options: list | None = None, **kwargs: Any
) -> list[float | None]:
    """Reward: `overlap_score` of each completion's answer part with the `answer` column.

    Abstains (None) where the reference is empty or is an option letter (choice_accuracy grades those rows).
    """
    options = options or [None] * len(completions)
    rewards: list[float | None] = []
    for completion, reference, row_options in zip(completions, answer, options, strict=True):
        if not tokenize(reference or "") or reference_letters(reference, row_options) is not None:
            rewards.append(None)
        else:
            rewards.append(overlap_score(answer_part(completion_text(completion)), reference))
    return rewards


# ---------------------------------------------------------------- choice_accuracy: option letters

# Letters are upper case only: a lower-case "a" is far more often the English article than a choice.
_SEPARATOR = r"\s*(?:[,/&+、]|and|or|和|与|及|或)?\s*"
_LETTERS = rf"\(?[A-Z]\)?(?:{_SEPARATOR}\(?[A-Z]\)?)*"
ONLY_LETTERS = re.compile(rf"\W*({_LETTERS})\W*")
_VERB = r"\s*(?i:是|为|应该是|应为|应选|is|are|would be|should be|=)?\s*:?\s*"
# "答案"/"answer" outrank "选项"/"option": "答案是B，选项A错误" chose B.
STRONG_CUE = re.compile(rf"(?i:正确答案|最终答案|答案|answers?){_VERB}({_LETTERS})(?![A-Za-z])")
WEAK_CUE = re.compile(rf"(?i:选项|选择|选|options?|choices?){_VERB}({_LETTERS})(?![A-Za-z])")
LEADING_LETTER = re.compile(r"\W*\(?([A-Z])(?:[.:、)]|\s*$)")  # "B. Aspirin", "(C) fever", "B、阿司匹林"
REFERENCE = re.compile(r"\(?([A-Z](?:\s*[,/、]?\s*[A-Z])*)\)?\.?")
LETTERS_WITHOUT_OPTIONS = set("ABCDEFGH")


def parse_options(value: str | dict | None) -> dict[str, str] | None:
    """The `options` column as {letter: text}: a JSON object string or a dict; None when empty."""
    if not value:
        return None
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise UserError(
            f"the `options` column holds {value[:60]!r}, which is not JSON ({err}); write a JSON object "
            'such as {"A": "...", "B": "..."}, or "" for a row that is not multiple choice.'
        ) from err
    if not isinstance(parsed, dict):
        raise UserError(
            f"the `options` column holds {str(value)[:60]!r}; write a JSON object such as "
            '{"A": "...", "B": "..."}, or "" for a row that is not multiple choice.'
        )
    return {re.sub(r"[^A-Za-z]", "", str(key)).upper(): str(text) for key, text in parsed.items()}


def reference_letters(reference: str, options: str | dict | None) -> frozenset[str] | None:
    """The reference option letters ("B", "AC", "A, C"), or None when the reference is not letters."""
    match = REFERENCE.fullmatch(unicodedata.normalize("NFKC", reference or "").strip())
    if not match:
        return None
    letters = re.findall(r"[A-Z]", match.group(1))
    parsed = parse_options(options)
    # Without options, only short distinct A-H runs count, so that a free-text answer like "DNA" is not a choice.
    valid = set(parsed) if parsed else LETTERS_WITHOUT_OPTIONS
    if len(set(letters)) != len(letters) or not set(letters) <= valid:
        return None
    return frozenset(letters)


def _normalize_option(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip(" .。")


def _letters_by_option_text(answer: str, options: dict[str, str]) -> frozenset[str]:
    answer = _normalize_option(answer)
    normalized = {letter: _normalize_option(text) for letter, text in options.items()}
    found = {letter: text for letter, text in normalized.items() if text and text in answer}
    # "高热" inside "持续高热" is not a second choice.
    return frozenset(
        letter
        for letter, text in found.items()
        if not any(text != other and text in other for other in found.values())
    )


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    # A model that restates its choice ends with the final one.
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def chosen_letters(answer: str, options: str | dict | None = None) -> frozenset[str]:
    """The option letter(s) an answer chooses; empty when it names none.

    Tried in order: the answer is only letters ("B", "(C)", "A and C"); the last "答案是 X" / "The answer is X";
    the last "选项 X" / "option X"; a leading "B." or "(B)"; option texts repeated verbatim (with `options`).
    """
    answer = unicodedata.normalize("NFKC", answer).strip()
    match = (
        ONLY_LETTERS.fullmatch(answer)
        or _last_match(STRONG_CUE, answer)
        or _last_match(WEAK_CUE, answer)
        or LEADING_LETTER.match(answer)
    )
    if match:
        return frozenset(re.findall(r"[A-Z]", match.group(1)))
    parsed = parse_options(options)
    return _letters_by_option_text(answer, parsed) if parsed else frozenset()


def choice_accuracy(
    prompts: list, completions: list[Completion], answer: list[str], options: list | None = None, **kwargs: Any
) -> list[float | None]:
    """Reward: 1.0 when the letters chosen in the answer part equal the reference letters (any order), else 0.0.

    Abstains (None) where the `answer` column is not option letters.
    """
    options = options or [None] * len(completions)
    rewards: list[float | None] = []
    for completion, reference, row_options in zip(completions, answer, options, strict=True):
        expected = reference_letters(reference, row_options)
        if expected is None:
            rewards.append(None)
        else:
            chosen = chosen_letters(answer_part(completion_text(completion)), row_options)
            rewards.append(1.0 if chosen == expected else 0.0)
    return rewards


# ---------------------------------------------------------------- factories for the table

# Unlike MedicalGPT's pattern, whitespace between the blocks and multi-line reasoning are allowed (DOTALL).
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
    """`format`: 1.0 when the whole completion matches the format pattern, else 0.0."""
    regex = format_regex(settings)

    def reward(prompts: list, completions: list[Completion], **kwargs: Any) -> list[float | None]:
        return [1.0 if regex.fullmatch(completion_text(completion)) else 0.0 for completion in completions]

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
