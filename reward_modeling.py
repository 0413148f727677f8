"""Reward model: a sequence classifier with one score, trained on chosen/rejected pairs (pairwise loss).

Evaluation reports pairwise accuracy (chosen scored above rejected) and the mean margin. With LoRA the score head
is trained in full and saved with the adapter; merge_peft_adapter.py then gives a standalone reward model, and
`medgpt.preference.score(model_dir, prompt, answers)` scores answers with it.

    python reward_modeling.py --model_name_or_path merged-sft --train_file_dir data/reward --template_name qwen2.5 \
        --output_dir outputs-rm --max_steps 100
    torchrun --nproc_per_node 8 reward_modeling.py --deepspeed zero2.json ...
    python reward_modeling.py --config rm.yaml --learning_rate 1e-5    # CLI flags override the file
"""

from trl import RewardConfig, RewardTrainer

from medgpt import args, model, preference, saving
from medgpt.errors import run_cli

ARG_TYPES = (*args.PAIR_STAGE_ARGUMENTS, args.OutputArguments, RewardConfig)
DEFAULTS = {"do_train": True, "report_to": ["tensorboard"], "logging_steps": 10, "remove_unused_columns": False}
ID_COLUMNS = ["chosen_ids", "rejected_ids"]


def main(argv: list[str] | None = None) -> RewardTrainer:
    model_args, lora_args, data_args, chat_args, pref_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    tokenizer, template, splits = preference.tokenizer_and_pairs(
        model_args, chat_args, data_args, pref_args, training_args, align_eos=False
    )
    rm = model.load_model(model_args, lora_args, tokenizer, training_args, training_args.max_length, task="reward")
    trainer = preference.pair_trainer(RewardTrainer, rm, training_args, splits, ID_COLUMNS, tokenizer)
    return saving.train_and_evaluate(trainer, template, chat_args.tool_format)


if __name__ == "__main__":
    run_cli(main, training=True)
