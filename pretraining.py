"""Continued pre-training (LoRA, QLoRA or full) on plain text: `.txt` files (one document per line) or
`{"text": ...}` rows in `.jsonl`/`.json` files.

    python pretraining.py --model_name_or_path Qwen/Qwen2.5-0.5B --train_file_dir data/pretrain \
        --block_size 512 --output_dir outputs-pt --max_steps 100
    torchrun --nproc_per_node 8 pretraining.py --deepspeed zero2.json ...
    python pretraining.py --config pt.yaml --learning_rate 1e-4    # CLI flags override the file
"""

import logging
from dataclasses import dataclass, field

from transformers import TrainingArguments

from medgpt import args, data, model, saving, tokenization
from medgpt.errors import UserError, run_cli
from medgpt.lm_trainer import LMTrainer

logger = logging.getLogger(__name__)


@dataclass
class PretrainArguments:
    block_size: int = field(
        default=1024, metadata={"help": "Tokens per training row (0: the tokenizer's max length, at most 1024)."}
    )
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep the line break ending each .txt line."})
    packing: bool = field(
        default=True,
        metadata={
            "help": "Concatenate documents into full blocks; attention and positions restart at every document."
        },
    )


ARG_TYPES = (
    args.ModelArguments,
    args.LoraArguments,
    args.DataArguments,
    PretrainArguments,
    args.LossArguments,
    args.OutputArguments,
    TrainingArguments,
)
DEFAULTS = {"do_train": True, "report_to": ["tensorboard"], "logging_steps": 10, "remove_unused_columns": False}


def main(argv: list[str] | None = None) -> LMTrainer:
    model_args, lora_args, data_args, pt_args, loss_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    tokenizer = model.load_tokenizer(model_args)
    block_size = pt_args.block_size or min(1024, tokenizer.model_max_length)
    if block_size < 2:
        raise UserError(f"--block_size {block_size} is too small; use at least 2 tokens (typically 512-4096).")
    if block_size > tokenizer.model_max_length:
        logger.warning("--block_size %d exceeds the tokenizer's max length %d", block_size, tokenizer.model_max_length)

    # Data is read, validated and tokenized before anything is written to output_dir.
    with training_args.main_process_first(desc="tokenize"):
        raw = data.load_datasets(data_args, "text", training_args.seed, pt_args.keep_linebreaks, model_args.cache_dir)
        splits = data.prepare_splits(
            raw,
            data_args,
            training_args,
            lambda rows, name: tokenization.tokenize_pretrain(
                rows,
                tokenizer,
                block_size,
                pt_args.packing,
                data_args.preprocessing_num_workers,
                data_args.overwrite_cache,
                what=name,
            ),
            f"the data has fewer tokens than one --block_size {block_size} block; lower --block_size, add text, "
            "or use --packing False.",
            cap_rows=False,  # MedicalGPT semantics: the cap counts blocks, not documents
        )

    lm = model.load_model(model_args, lora_args, tokenizer, training_args, block_size)
    trainer = LMTrainer.on_splits(
        lm, training_args, splits, tokenizer, loss_args.loss_chunk_size, model.padding_free(model_args)
    )
    return saving.train_and_evaluate(trainer, perplexity=True)


if __name__ == "__main__":
    run_cli(main, training=True)
