"""GRPO: sample several answers per prompt, score them with reward functions, and learn from how each answer
compares with its group (no critic, no reward model needed). Wraps TRL's GRPOTrainer; every GRPOConfig option is
a flag.

Prompts: MedicalGPT's {"question", "answer"} rows, chat rows (the final answer is the reference), multiple-choice
rows {"question", "options", "answer": letter}. Rewards come from --reward_funcs (names from medgpt.rewards, or
package.module:function), weighted by --reward_weights.

    python grpo_training.py --model_name_or_path merged-sft --train_file_dir data/grpo --template_name qwen2.5 \
        --reward_funcs medical_accuracy format --num_generations 4 --per_device_train_batch_size 4 \
        --max_completion_length 256 --output_dir outputs-grpo
    torchrun --nproc_per_node 8 grpo_training.py --deepspeed zero2.json ...
    python grpo_training.py --config grpo.yaml --beta 0.001    # CLI flags override the file
"""

import json
import logging
import os
from dataclasses import dataclass, field

from trl import GRPOConfig

from medgpt import args, model, prompts, saving
from medgpt.errors import UserError, run_cli
from medgpt.grpo import OnPolicyGRPOTrainer
from medgpt.rewards import RewardArguments, RewardSettings, build_reward_funcs

logger = logging.getLogger(__name__)

THINK_THEN_ANSWER = (
    "You are a careful medical assistant. Reason about the question inside <think> </think> tags, then give your "
    "final answer inside <answer> </answer> tags."
)


@dataclass
class GRPOArguments(RewardArguments):
    system_prompt: str = field(default=THINK_THEN_ANSWER, metadata={"help": "System prompt for rows without one."})


# generate() settings that change the distribution answers are sampled from (beyond the temperature).
SHAPING_SETTINGS = {
    "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h", "repetition_penalty",
    "no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens", "begin_suppress_tokens",
    "min_length", "min_new_tokens", "exponential_decay_length_penalty", "guidance_scale", "num_beams",
}  # fmt: skip


def _as_dict(value: dict | str | None, flag: str) -> dict:
    """A dict flag as given on the command line (JSON) or in a config file."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{flag} {value!r} is not JSON ({err}); write an object such as '{{\"key\": 1}}'."
            ) from None
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{flag} {value!r} must be a JSON object such as '{{\"key\": 1}}'.")
    return value or {}


class GRPOFlags(GRPOConfig):
    """GRPOConfig whose batch checks name our flags (TRL users' most frequent error) before TRL's own run."""

    def __post_init__(self) -> None:
        generations = self.num_generations or 8
        processes = int(os.environ.get("WORLD_SIZE", "1"))  # the distributed state is set up later, by TRL
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        batch = self.per_device_train_batch_size * processes * steps
        if self.generation_batch_size is None and batch % generations:
            raise UserError(
                f"--per_device_train_batch_size {self.per_device_train_batch_size} x --gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps} x {processes} process(es) = {batch} completions per generation "
                f"batch, which --num_generations {generations} does not divide: the {generations} answers to one "
                f"prompt must land in the same batch. Make the batch a multiple of {generations} (e.g. "
                f"--per_device_train_batch_size {generations}) or change --num_generations."
            )
        off_policy = [
            f"--{name} {value} (leave it at {neutral})"
            for name, value, neutral in (
                ("top_p", self.top_p, 1.0),
                ("top_k", self.top_k, 0),
                ("min_p", self.min_p, None),
                ("repetition_penalty", self.repetition_penalty, 1.0),
            )
            if value not in (neutral, None)
        ]
        off_policy += [
            f"--generation_kwargs {key}={value} (leave it out)"
            for key, value in _as_dict(self.generation_kwargs, "--generation_kwargs").items()
            if key in SHAPING_SETTINGS
        ]
        if off_policy:
            raise UserError(
                f"{', '.join(off_policy)}: GRPO computes the answers' log-probs from logits / temperature alone, so "
                "answers sampled under truncation or a penalty would be trained on off-policy without correction. "
                "Lower --temperature for safer samples instead."
            )
        try:
            super().__post_init__()
        except ValueError as err:
            raise UserError(f"invalid GRPO arguments: {err}") from None


ARG_TYPES = (*args.CHAT_STAGE_ARGUMENTS, GRPOArguments, args.OutputArguments, GRPOFlags)
DEFAULTS = args.RL_STAGE_DEFAULTS


def main(argv: list[str] | None = None) -> OnPolicyGRPOTrainer:
    model_args, lora_args, data_args, chat_args, grpo_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    settings = RewardSettings.of(grpo_args, training_args.max_completion_length, str(training_args.device))
    reward_funcs = build_reward_funcs(grpo_args.reward_funcs, settings)
    weights = training_args.reward_weights
    if weights is not None and len(weights) != len(reward_funcs):
        raise UserError(
            f"--reward_weights has {len(weights)} values but --reward_funcs names {len(reward_funcs)} functions "
            f"({' '.join(grpo_args.reward_funcs)}); give one weight per function."
        )
    tokenizer, template = model.load_chat_tokenizer(model_args, chat_args, padding_side="left")

    # Prompts are read and validated before anything is written to output_dir.
    splits = prompts.load_prompt_splits(
        data_args,
        training_args,
        model_args.cache_dir,
        lambda rows, name: prompts.conversational_prompts(rows, grpo_args.system_prompt),
        "read prompts",
    )
    if any(any(split["tools"]) for split in splits.values()):
        logger.warning(
            "tool definitions in the prompt rows are passed to the reward functions, not shown to the model"
        )

    trainer = OnPolicyGRPOTrainer(
        model=model.load_model(model_args, lora_args, tokenizer, training_args),
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=splits.get("train", splits.get("validation")),  # TRL needs one even to evaluate
        eval_dataset=splits.get("validation"),
        processing_class=tokenizer,
    )
    return saving.train_and_evaluate(trainer, template, chat_args.tool_format)


if __name__ == "__main__":
    run_cli(main, training=True)
