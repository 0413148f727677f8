"""ORPO: preference optimisation with an odds-ratio term on top of the SFT loss, and no reference model.

Uses TRL's ORPO trainer (trl.experimental.orpo): it computes the loss from the policy alone, so nothing but the
model being trained is held in memory. MedicalGPT's --orpo_beta is accepted as the name of TRL's --beta.

    python orpo_training.py --model_name_or_path merged-sft --train_file_dir data/reward --template_name qwen2.5 \
        --output_dir outputs-orpo --max_steps 100 --beta 0.1
    torchrun --nproc_per_node 8 orpo_training.py --deepspeed zero2.json ...
    python orpo_training.py --config orpo.yaml --learning_rate 5e-6    # CLI flags override the file
"""

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we chose the experimental trainer knowingly

from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from medgpt import args, model, preference, saving  # noqa: E402
from medgpt.errors import run_cli  # noqa: E402

ARG_TYPES = (
    *args.PAIR_STAGE_ARGUMENTS,
    args.OutputArguments,
    ORPOConfig,
)  # MedicalGPT's --orpo_beta is read as --beta
DEFAULTS = {"do_train": True, "report_to": ["tensorboard"], "logging_steps": 10, "remove_unused_columns": False}
TEXT_COLUMNS = ["prompt", "chosen", "rejected"]


def main(argv: list[str] | None = None) -> ORPOTrainer:
    model_args, lora_args, data_args, chat_args, pref_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    tokenizer, template, splits = preference.tokenizer_and_pairs(
        model_args, chat_args, data_args, pref_args, training_args, align_eos=True, reserved_tokens=2
    )
    lm = model.load_model(model_args, lora_args, tokenizer, training_args, training_args.max_length)
    trainer = preference.pair_trainer(ORPOTrainer, lm, training_args, splits, TEXT_COLUMNS, tokenizer)
    return saving.train_and_evaluate(trainer, template, chat_args.tool_format)


if __name__ == "__main__":
    run_cli(main, training=True)
