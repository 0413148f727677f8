"""Supervised fine-tuning (LoRA, QLoRA or full) on chat data: ShareGPT, Alpaca or OpenAI-messages files.

Only assistant turns (each with its stop token) are trained, in every turn of a multi-turn chat.

    python supervised_finetuning.py --model_name_or_path merged-pt --train_file_dir data/sft \
        --template_name qwen2.5 --output_dir outputs-sft --max_steps 100
    torchrun --nproc_per_node 8 supervised_finetuning.py --deepspeed zero2.json --packing True ...
    python supervised_finetuning.py --config sft.yaml --learning_rate 1e-5    # CLI flags override the file
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from medgpt import args, data, model, saving, tokenization
from medgpt.errors import UserError, run_cli
from medgpt.lm_trainer import LMTrainer


@dataclass
class SFTArguments:
    model_max_length: int = field(
        default=512, metadata={"help": "Longest sample in tokens; longer chats are cut at a turn boundary."}
    )
    train_on_inputs: bool = field(default=False, metadata={"help": "Also train on prompts (system/user turns)."})
    packing: bool = field(
        default=True,
        metadata={
            "help": "Pack several whole samples per row (no attention across them): same loss, about 1.7x faster on "
            "MedicalGPT's SFT sample (benchmarks/sft_speed.py). False = one sample per row, padded."
        },
    )


ARG_TYPES = (
    args.ModelArguments,
    args.LoraArguments,
    args.DataArguments,
    args.ChatArguments,
    SFTArguments,
    args.LossArguments,
    args.OutputArguments,
    TrainingArguments,
)
DEFAULTS = {"do_train": True, "report_to": ["tensorboard"], "logging_steps": 10, "remove_unused_columns": False}


def main(argv: list[str] | None = None) -> LMTrainer:
    model_args, lora_args, data_args, chat_args, sft_args, loss_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    if sft_args.model_max_length < 16:
        raise UserError(f"--model_max_length {sft_args.model_max_length} is too short; use at least 16 tokens.")
    tokenizer, template = model.load_chat_tokenizer(model_args, chat_args)

    # Data is read, validated and tokenized before anything is written to output_dir.
    with training_args.main_process_first(desc="tokenize"):
        raw = data.load_datasets(data_args, "chat", training_args.seed, cache_dir=model_args.cache_dir)

        def prepare(rows, name):
            tokenized = tokenization.tokenize_sft(
                rows,
                tokenizer,
                template,
                sft_args.model_max_length,
                sft_args.train_on_inputs,
                data_args.preprocessing_num_workers,
                data_args.overwrite_cache,
                what=name,
            )
            if sft_args.packing and len(tokenized):
                return tokenization.pack(tokenized, sft_args.model_max_length, training_args.seed)
            return tokenized

        splits = data.prepare_splits(
            raw,
            data_args,
            training_args,
            prepare,
            f"no training row fits --model_max_length {sft_args.model_max_length}: every prompt alone is longer. "
            "Raise --model_max_length.",
        )

    lm = model.load_model(model_args, lora_args, tokenizer, training_args, sft_args.model_max_length)
    trainer = LMTrainer.on_splits(
        lm, training_args, splits, tokenizer, loss_args.loss_chunk_size, model.padding_free(model_args)
    )
    return saving.train_and_evaluate(trainer, template, chat_args.tool_format, perplexity=True)


if __name__ == "__main__":
    run_cli(main, training=True)
