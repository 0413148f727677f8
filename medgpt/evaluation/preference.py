"""Section `preference`: chosen vs rejected answers. A reward model's scores; for a causal LM, the DPO implicit reward
against --reference_model, or else the plain log-prob margin."""

import json
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from medgpt.errors import UserError
from medgpt.evaluation.loglik import Sequence, answer_sequence, sequence_logprobs
from medgpt.evaluation.section import Context, Section, number


@dataclass
class PreferenceArguments:
    preference_file: str | None = field(
        default=None, metadata={"help": "Chosen/rejected pairs: pairwise accuracy and margin."}
    )
    reference_model: str | None = field(
        default=None, metadata={"help": "Reference model folder for the DPO implicit reward on --preference_file."}
    )

    def __post_init__(self) -> None:
        if self.reference_model and not self.preference_file:
            raise UserError(
                f"--reference_model {self.reference_model} is only used with --preference_file; add that, or drop it."
            )


def pair_sequences(tokenizer, template, rows: list[dict], max_length: int) -> list[Sequence]:
    """Chosen and rejected answer of each pair after its prompt, alternating: [c0, r0, c1, r1, ...]."""
    sequences = []
    for row in rows:
        prompt, tools = json.loads(row["prompt"]), json.loads(row["tools"]) if row["tools"] else None
        for side in ("chosen", "rejected"):
            sequences.append(answer_sequence(tokenizer, template, prompt, json.loads(row[side]), tools, max_length))
    return sequences


def pair_figures(kind: str, chosen: list[float], rejected: list[float]) -> dict:
    """Pairwise accuracy (fraction with chosen > rejected) and mean margin of per-pair values."""
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "kind": kind,
        "pairs": len(margins),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "margin": sum(margins) / len(margins),
        "chosen": sum(chosen) / len(chosen),
        "rejected": sum(rejected) / len(rejected),
        "margins": margins,
    }


def lm_preference(
    model,
    tokenizer,
    template,
    rows: list[dict],
    reference=None,
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = True,
) -> dict:
    """Causal LM on pairs. With a reference model: the DPO implicit reward log p(answer) - log p_ref(answer) (beta 1),
    both computed on the same tokens; without one: log p(answer). Summed over the answer and its stop string."""
    sequences = pair_sequences(tokenizer, template, rows, max_length)
    pad = tokenizer.pad_token_id
    logps = [s for s, _ in sequence_logprobs(model, sequences, batch_size, pad, "preference pairs", progress)]
    if reference is None:
        return pair_figures("logprob", logps[0::2], logps[1::2])
    ref = [s for s, _ in sequence_logprobs(reference, sequences, batch_size, pad, "reference model", progress)]
    rewards = [p - r for p, r in zip(logps, ref, strict=True)]
    return pair_figures("dpo_implicit_reward", rewards[0::2], rewards[1::2])


def reward_model_preference(scorer, rows: list[dict], batch_size: int = 8, progress: bool = True) -> dict:
    """A reward model (medgpt.scoring.RewardModelScorer) scores both answers of every pair."""
    chosen, rejected = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc="reward model", unit="batch", disable=not progress):
        chunk = rows[start : start + batch_size]
        prompts, tools = [json.loads(r["prompt"]) for r in chunk], [r["tools"] for r in chunk]
        chosen += scorer(prompts, [json.loads(r["chosen"]) for r in chunk], tools)
        rejected += scorer(prompts, [json.loads(r["rejected"]) for r in chunk], tools)
    return pair_figures("reward_model", chosen, rejected)


def check_reference(reference: Any, path: str, tokenizer: Any) -> None:
    if reference.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise UserError(
            f"--reference_model {path} has fewer embedding rows than the evaluated model's tokenizer has tokens "
            f"({len(tokenizer)}); pass the model the evaluated one was trained from."
        )


def prepare(args: PreferenceArguments, engine_args: Any, eval_args: Any) -> Any:
    """The reference model, loaded before the evaluated one so that a wrong path fails at once."""
    if not args.reference_model:
        return None
    from medgpt.model import load_saved

    return load_saved(
        args.reference_model,
        torch_dtype=eval_args.dtype(),
        trust_remote_code=engine_args.trust_remote_code,
        flags=("--reference_model", "--lora_model"),
    )[0]


def run(context: Context, rows: list[dict], args: PreferenceArguments, reference: Any) -> dict:
    if context.kind == "reward":
        from medgpt.scoring import RewardModelScorer

        if args.reference_model:
            raise UserError(
                f"--reference_model {args.reference_model}: --base_model {context.engine_args.base_model} is a "
                "reward model, which scores pairs itself; drop --reference_model."
            )
        engine_args, eval_args = context.engine_args, context.eval_args
        scorer = RewardModelScorer(
            engine_args.base_model,
            engine_args.lora_model,
            engine_args.template_name,
            eval_args.batch_size,
            torch_dtype=eval_args.dtype(),
            flags=("--base_model", "--lora_model"),
        )
        return reward_model_preference(scorer, rows, eval_args.batch_size, context.progress)
    if reference is not None:
        check_reference(reference, args.reference_model, context.tokenizer)
    return lm_preference(
        context.model,
        context.tokenizer,
        context.template,
        rows,
        reference,
        context.eval_args.batch_size,
        context.max_length,
        context.progress,
    )


def headline(figures: dict) -> list[tuple[str, str]]:
    kind = figures["kind"]
    return [
        (f"accuracy ({kind})", number(figures["accuracy"])),
        (f"margin ({kind})", number(figures["margin"])),
        ("pairs", number(figures["pairs"])),
    ]


SECTION = Section(
    "preference", PreferenceArguments, "preference_file", "preference", run, headline, prepare, on_reward_model=True
)
