"""On-policy distillation (OPD): a small student learns a larger teacher's next-token distributions on answer
tokens, on the dataset's answers and on its own samples, graded token by token by the teacher. Wraps TRL's GKD
trainer; every GKDConfig option is a flag.

--lmbda (MedicalGPT: --opd_lambda) is the share of steps trained on the student's own samples (1: fully on-policy,
0: the dataset's answers only); --beta (--opd_beta) picks the divergence: 0 forward KL, 1 reverse KL, 0.5 the
Jensen-Shannon divergence. Teacher and student must share a tokenizer; otherwise distil offline (docs/distillation.md).
Rows: chats (every assistant turn distilled), or prompt rows (question/answer, multiple choice, {"prompt"}) whose
reference answer is distilled; prompt rows without one are answered by the student only (--opd_lambda 1).

    python opd_training.py --model_name_or_path small-student --teacher_model_name_or_path merged-sft \\
        --train_file_dir data/sft --template_name qwen2.5 --opd_lambda 0.5 --opd_beta 0.5 \\
        --max_new_tokens 256 --output_dir outputs-opd
    torchrun --nproc_per_node 2 opd_training.py --deepspeed zero2.json ...
    python opd_training.py --config opd.yaml --teacher_load_in_4bit True    # CLI flags override the file
"""

from dataclasses import dataclass, field

from trl.experimental.gkd import GKDConfig

from medgpt import args, data, distill, model, saving, tokenization
from medgpt.distill import DistillCollator, OnPolicyDistillTrainer, check_same_vocabulary
from medgpt.errors import UserError, run_cli


@dataclass
class OPDArguments:
    teacher_lora_model: str | None = field(default=None, metadata={"help": "LoRA adapter on the teacher folder."})
    teacher_load_in_4bit: bool = field(default=False, metadata={"help": "Load the teacher in 4-bit (bitsandbytes)."})
    teacher_load_in_8bit: bool = field(default=False, metadata={"help": "Load the teacher in 8-bit (bitsandbytes)."})
    max_prompt_length: int = field(default=1024, metadata={"help": "Drop rows whose prompt is longer (tokens)."})


class OPDFlags(GKDConfig):
    """GKDConfig whose checks name our flags."""

    def __post_init__(self) -> None:
        if self.teacher_model_name_or_path is None:
            raise UserError("--teacher_model_name_or_path is required: the model folder the student learns from.")
        try:
            super().__post_init__()
        except ValueError as err:
            raise UserError(
                f"invalid distillation arguments (--lmbda/--opd_lambda, --beta/--opd_beta): {err}"
            ) from None


ARG_TYPES = (*args.CHAT_STAGE_ARGUMENTS, OPDArguments, args.OutputArguments, OPDFlags)
DEFAULTS = {**args.RL_STAGE_DEFAULTS, "learning_rate": 5e-5, "logging_steps": 10}


def main(argv: list[str] | None = None) -> OnPolicyDistillTrainer:
    model_args, lora_args, data_args, chat_args, opd_args, output_args, training_args = args.parse(
        ARG_TYPES, argv, DEFAULTS
    )
    args.check_args(model_args, lora_args, data_args, training_args, output_args)
    if opd_args.max_prompt_length < 1 or training_args.max_length is None:
        raise UserError("--max_prompt_length must be at least 1 and --max_length set (the longest distilled row).")
    tokenizer, template = model.load_chat_tokenizer(model_args, chat_args, padding_side="left")

    # Rows are read, tokenized with the template's masks and checked before anything is written to output_dir.
    kind = distill.row_kind(data_args)
    with training_args.main_process_first(desc="tokenize"):
        raw = data.load_datasets(data_args, kind, training_args.seed, cache_dir=model_args.cache_dir)

        def prepare(rows, name):
            workers, overwrite = data_args.preprocessing_num_workers, data_args.overwrite_cache
            if kind == "chat":
                tokenized = tokenization.tokenize_sft(
                    rows, tokenizer, template, training_args.max_length, False, workers, overwrite, what=name
                )
            else:
                tokenized = distill.tokenize_prompt_rows(
                    rows, tokenizer, template, training_args.max_length, workers, overwrite, name
                )
            return distill.prompt_rows(tokenized, opd_args.max_prompt_length)

        splits = data.prepare_splits(
            raw, data_args, training_args, prepare,
            f"no row has a prompt of at most --max_prompt_length {opd_args.max_prompt_length} tokens that fits "
            f"--max_length {training_args.max_length}; raise them.",
        )  # fmt: skip
    distill.check_answers_for_lambda(splits, training_args.lmbda)

    teacher, teacher_tokenizer, _ = model.load_saved(
        training_args.teacher_model_name_or_path,
        opd_args.teacher_lora_model,
        template_name=chat_args.template_name,
        torch_dtype=model_args.dtype(),
        load_in_4bit=opd_args.teacher_load_in_4bit,
        load_in_8bit=opd_args.teacher_load_in_8bit,
        trust_remote_code=model_args.trust_remote_code,
        flags=("--teacher_model_name_or_path", "--teacher_lora_model"),
    )
    check_same_vocabulary(tokenizer, teacher_tokenizer, training_args.teacher_model_name_or_path)
    student = model.load_model(model_args, lora_args, tokenizer, training_args, training_args.max_length)
    trainer = OnPolicyDistillTrainer(
        model=student,
        teacher_model=teacher,
        tokenizer=tokenizer,
        template=template,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation"),
        data_collator=DistillCollator(tokenizer.pad_token_id),
    )
    return saving.train_and_evaluate(trainer, template, chat_args.tool_format)


if __name__ == "__main__":
    run_cli(main, training=True)
