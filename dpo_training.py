"""Direct preference optimisation (DPO) on chosen/rejected answer pairs, after SFT.

With LoRA the reference model is the base with the adapter switched off: no second copy in memory. With
--precompute_ref_log_probs the reference log-probs are computed once and cached on disk, keyed by the data and
model fingerprints: a second run on the same data and model does no reference forward at all.

    python dpo_training.py --model_name_or_path merged-sft --train_file_dir data/reward --template_name qwen2.5 \
        --output_dir outputs-dpo --max_steps 100 --beta 0.1 --loss_type sigmoid
    torchrun --nproc_per_node 8 dpo_training.py --deepspeed zero2.json --precompute_ref_log_probs True ...
    python dpo_training.py --config dpo.yaml --learning_rate 5e-6    # CLI flags override the file
"""

import dataclasses
import logging
import os
import time

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from medgpt import args, model, preference, saving
from medgpt.errors import run_cli

logger = logging.getLogger(__name__)

ARG_TYPES = (*args.PAIR_STAGE_ARGUMENTS, args.OutputArguments, DPOConfig)
DEFAULTS = {"do_train": True, "report_to": ["tensorboard"], "logging_steps": 10, "remove_unused_columns": False}
TEXT_COLUMNS = ["prompt", "chosen", "rejected"]


def log_reference_cache(trainer: DPOTrainer, started: float) -> None:
    """Say whether the reference log-probs were computed now or reused from the on-disk cache."""
    for name, dataset in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        files = [f["filename"] for f in getattr(dataset, "cache_files", None) or []]
        cached = [f for f in files if "ref_chosen_logps" in Dataset.from_file(f).column_names]
        for file in cached:
            reused = os.path.getmtime(file) < started
            logger.info(
                "%s reference log-probs %s %s",
                name,
                "reused from the cache" if reused else "computed and cached in",
                file,
            )


def drop_reference_copy_of_a_new_adapter(trainer: DPOTrainer, lora_args) -> None:
    """Make the reference the base with the adapter switched off when the adapter is new.

    TRL copies any adapter it is given into a frozen "ref" adapter, right for an adapter trained before
    (--peft_path), but a new LoRA adapter starts as zero, so the copy computes exactly the base model, at the cost
    of the adapter's matmuls and dropout on every reference forward. Without "ref", TRL switches the adapter off.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not lora_args.peft_path and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
        model.set_adapter("default")


def main(argv: list[str] | None = None) -> DPOTrainer:
    model_args, lora_args, data_args, chat_args, pref_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    tokenizer, template, splits = preference.tokenizer_and_pairs(
        model_args, chat_args, data_args, pref_args, training_args, align_eos=True
    )
    max_length = training_args.max_length

    # The pairs already fit max_length, cut the right way (prompt first, stop tokens kept). TRL must not cut them
    # again, and without a length in its config its dataset fingerprints (and so the cache of reference log-probs)
    # depend on the data and tokenizer only, not on unrelated settings such as output_dir.
    started = time.time()
    trainer = preference.pair_trainer(
        DPOTrainer,
        model.load_model(model_args, lora_args, tokenizer, training_args, max_length),
        dataclasses.replace(training_args, max_length=None),
        splits,
        TEXT_COLUMNS,
        tokenizer,
        ref_model=None,  # LoRA: the adapter-disabled base; full fine-tuning: TRL keeps a frozen copy
    )
    drop_reference_copy_of_a_new_adapter(trainer, lora_args)
    if training_args.precompute_ref_log_probs and trainer.is_world_process_zero():
        log_reference_cache(trainer, started)
    return saving.train_and_evaluate(trainer, template, chat_args.tool_format)


if __name__ == "__main__":
    run_cli(main, training=True)
