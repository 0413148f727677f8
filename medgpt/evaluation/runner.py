"""Running the sections asked for on one saved model: read every file first, load the model once, run each
section, time it. Knows no section by name: it reads the table in medgpt.evaluation.sections."""

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from medgpt.args import DTYPES
from medgpt.engine import EngineArguments
from medgpt.errors import UserError
from medgpt.evaluation.judge import Judge
from medgpt.evaluation.rows import read_rows
from medgpt.evaluation.section import Context
from medgpt.evaluation.sections import SECTIONS


@dataclass
class EvalArguments:
    """Flags every section shares."""

    batch_size: int = field(
        default=8, metadata={"help": "Sequences per forward pass, prompts per generation (MCQ: a question's options)."}
    )
    max_length: int = field(
        default=2048, metadata={"help": "Longest scored sequence in tokens; chats are cut at a turn as in SFT."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows of each file."})
    torch_dtype: Literal[DTYPES] | None = field(
        default=None,
        metadata={
            "help": "Weight dtype (auto = the checkpoint's). Default: the checkpoint's on a GPU, float32 on a CPU."
        },
    )
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip malformed rows (counted) instead of stopping."})
    output_file: str | None = field(default=None, metadata={"help": "Write every figure (and answers) to this JSON."})
    judge_base_url: str | None = field(
        default=None,
        metadata={
            "help": "A judge model's OpenAI-compatible endpoint (key: $JUDGE_API_KEY or $OPENAI_API_KEY), for "
            "--judge_file and for --triage_file's referrals."
        },
    )
    judge_model: str | None = field(default=None, metadata={"help": "The judge model's name at --judge_base_url."})
    judge_concurrency: int = field(default=4, metadata={"help": "Judge requests under way at once."})
    judge_max_retries: int = field(default=4, metadata={"help": "Retries per judge request (429, 5xx, timeouts)."})
    judge_timeout: float = field(default=120.0, metadata={"help": "Seconds per judge request before a retry."})
    judge_max_tokens: int = field(default=512, metadata={"help": "Longest judge reply (its reasons and verdict)."})
    judge_cache: str | None = field(
        default=None,
        metadata={"help": "The judge's answers, reused by reruns (default: ~/.cache/medgpt/judge_cache.jsonl)."},
    )

    def __post_init__(self) -> None:
        for flag, value, least in (
            ("batch_size", self.batch_size, 1),
            ("max_length", self.max_length, 8),
            ("max_samples", self.max_samples if self.max_samples is not None else 1, 1),
        ):
            if value < least:
                raise UserError(f"--{flag} {value} is too small; use at least {least}.")
        if bool(self.judge_base_url) != bool(self.judge_model):
            raise UserError("--judge_base_url and --judge_model go together: the endpoint and the judge model's name.")
        for flag, value, least in (
            ("judge_concurrency", self.judge_concurrency, 1),
            ("judge_max_retries", self.judge_max_retries, 0),
            ("judge_max_tokens", self.judge_max_tokens, 1),
        ):
            if value < least:
                raise UserError(f"--{flag} {value} is too small; use at least {least}.")
        if self.judge_timeout <= 0:
            raise UserError(f"--judge_timeout {self.judge_timeout}: give the seconds to wait, more than 0.")

    def judge(self) -> Judge | None:
        """The judge model the flags name, or None."""
        if not self.judge_base_url:
            return None
        return Judge(
            self.judge_base_url,
            self.judge_model,
            self.judge_cache,
            self.judge_concurrency,
            self.judge_max_retries,
            self.judge_timeout,
            self.judge_max_tokens,
        )

    def dtype(self) -> str | None:
        """The dtype to load weights in; None = the checkpoint's. CPUs get float32: most compute bf16/fp16 slowly
        (SmolLM2-135M: about 2x) and less exactly."""
        if self.torch_dtype is None:
            return None if torch.cuda.is_available() else "float32"
        return None if self.torch_dtype == "auto" else self.torch_dtype


def arguments(**flags: Any) -> list[Any]:
    """EvalArguments and every section's flag dataclass built from one flat set of flags, as the command line takes
    them: `evaluate(engine_args, *arguments(chat_file="data/eval/sft", batch_size=4))`."""
    objects = []
    for cls in (EvalArguments, *(section.arguments for section in SECTIONS.values())):
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        objects.append(cls(**{name: flags.pop(name) for name in names & set(flags)}))
    if flags:
        raise UserError(f"unknown evaluation flags: {', '.join('--' + name for name in flags)}")
    return objects


def model_kind(base_model: str, lora_model: str | None = None, trust_remote_code: bool = False) -> str:
    """ "reward" for a sequence classifier (or a SEQ_CLS adapter), else "causal"."""
    from medgpt.model import saved_task

    return saved_task(base_model, lora_model, trust_remote_code) or "causal"


def asked_sections(section_args: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    """(section, its flags) of every section whose file flag is given, in table order."""
    given = {type(args): args for args in section_args}
    asked = []
    for section in SECTIONS.values():
        args = given.get(section.arguments) or section.arguments()
        if getattr(args, section.file_flag):
            asked.append((section, args))
    if not asked:
        flags = ", ".join(f"--{section.file_flag}" for section in SECTIONS.values())
        raise UserError(f"nothing to evaluate: pass at least one of {flags} (a file, or a folder of them).")
    return asked


def evaluate(
    engine_args: EngineArguments, eval_args: EvalArguments, *section_args: Any, progress: bool = True
) -> dict:
    """Every section whose file flag is set in `section_args`, on the model `engine_args` names. Returns a JSON-ready
    dict: "model", one entry per section run (by section name) and "seconds" per section."""
    asked = asked_sections(section_args)
    rows = {
        section.name: section.read(args, eval_args)
        if section.read
        else read_rows(
            getattr(args, section.file_flag),
            section.row_kind,
            section.file_flag,
            eval_args.skip_bad_rows,
            eval_args.max_samples,
            section.check_row,
        )
        for section, args in asked
    }
    kind = model_kind(engine_args.base_model, engine_args.lora_model, engine_args.trust_remote_code)
    if kind == "reward" and (other := [s.file_flag for s, _ in asked if not s.on_reward_model]):
        raise UserError(
            f"--base_model {engine_args.base_model} is a reward model (a score head, no language model): it cannot "
            f"run {' or '.join('--' + flag for flag in other)}. Drop them, or evaluate a chat model."
        )
    prepared = {s.name: s.prepare(args, engine_args, eval_args) if s.prepare else None for s, args in asked}
    context = load(engine_args, eval_args, kind, progress)
    results: dict[str, Any] = {
        "model": {"base_model": engine_args.base_model, "lora_model": engine_args.lora_model, "kind": kind},
        "seconds": {},
    }
    if context.template is not None:
        results["model"]["template"] = context.template.name
    for section, args in asked:
        started = time.perf_counter()
        results[section.name] = section.run(context, rows[section.name], args, prepared[section.name])
        results["seconds"][section.name] = round(time.perf_counter() - started, 2)
    if context.judge is not None:
        results["judge_model"] = context.judge.report()
    return results


def load(engine_args: EngineArguments, eval_args: EvalArguments, kind: str, progress: bool) -> Context:
    """The evaluated model as every section sees it; a reward model is left to the sections to load as a scorer."""
    if kind == "reward":
        return Context(None, None, None, kind, engine_args, eval_args, eval_args.max_length, progress)
    from medgpt.model import load_saved

    model, tokenizer, template = load_saved(
        engine_args.base_model,
        engine_args.lora_model,
        template_name=engine_args.template_name,
        tokenizer_path=engine_args.tokenizer_path,
        torch_dtype=eval_args.dtype(),
        load_in_8bit=engine_args.load_in_8bit,
        load_in_4bit=engine_args.load_in_4bit,
        resize_emb=engine_args.resize_emb,
        trust_remote_code=engine_args.trust_remote_code,
    )
    context_length = getattr(model.config, "max_position_embeddings", None) or eval_args.max_length
    max_length = min(eval_args.max_length, context_length)
    return Context(model, tokenizer, template, kind, engine_args, eval_args, max_length, progress, eval_args.judge())
