"""Command-line arguments shared by the stage scripts, and the one parser they all use.

Flag names and meanings follow MedicalGPT so existing `run_*.sh` command lines keep working. Library-owned flags
(everything in `TrainingArguments` / TRL configs) are never redeclared here.
"""

import difflib
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments

from medgpt.errors import UserError

DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION = ("sdpa", "eager", "flash_attention_2")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Base model: a local directory or hub id."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use (e.g. an extended vocabulary); defaults to the model's."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base weights in 8-bit (bitsandbytes)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base weights in 4-bit (bitsandbytes)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for hub models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    hf_hub_token: str | None = field(default=None, metadata={"help": "Token for private hub models."})
    torch_dtype: Literal[DTYPES] | None = field(
        default=None, metadata={"help": "Weight dtype; None/auto keeps the checkpoint's dtype. No fp32 upcasting."}
    )
    device_map: str | None = field(
        default="auto", metadata={"help": "Where to load weights: auto, cpu, cuda:0 or none. Ignored under DDP."}
    )
    # Set by parse() from --trust_remote_code, which TRL configs declare themselves (see RemoteCodeArguments).
    trust_remote_code: bool = field(default=False, init=False)
    rope_scaling: Literal["linear", "dynamic"] | None = field(
        default=None, metadata={"help": "Stretch RoPE when the training length exceeds the model's context."}
    )
    flash_attn: bool = field(
        default=False, metadata={"help": "Use FlashAttention-2 (needs the flash-attn package and a CUDA GPU)."}
    )
    attn_implementation: Literal[ATTENTION] = field(default="sdpa", metadata={"help": "Attention kernel."})

    # Read through these, not the raw fields: the flags keep the values given, these say what they mean.
    def dtype(self) -> str | None:
        """The weight dtype asked for; None (also for auto) keeps the checkpoint's."""
        return None if self.torch_dtype in (None, "auto") else self.torch_dtype

    def attention(self) -> str:
        """The attention kernel; --flash_attn is MedicalGPT's switch for flash_attention_2."""
        return "flash_attention_2" if self.flash_attn else self.attn_implementation

    def placement(self) -> str | None:
        """--device_map, with none/None/"" meaning no device map."""
        return None if self.device_map in (None, "None", "none", "") else self.device_map


@dataclass
class RemoteCodeArguments:
    """--trust_remote_code for scripts whose library config (unlike TRL's) does not declare it."""

    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})


@dataclass
class OutputArguments:
    """Every training script's --overwrite_output_dir (transformers 5 dropped the flag MedicalGPT's scripts pass);
    main() has the folder checked (args.check_args -> saving.check_output_dir) before anything runs."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an --output_dir that holds an earlier run: its checkpoints and saved model are "
            "replaced. Without it such a rerun stops and says how to resume."
        },
    )


@dataclass
class LoraArguments:
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (False = full fine-tuning)."})
    target_modules: str = field(
        default="all", metadata={"help": "Comma list of module names, or 'all' = every linear layer but the head."}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scaling = alpha / rank)."})
    modules_to_save: str | None = field(
        default=None, metadata={"help": "Comma list of modules trained in full and saved, e.g. embed_tokens,lm_head."}
    )
    train_new_token_rows: bool = field(
        default=False,
        metadata={
            "help": "Train only the embedding rows of tokens added by tools/merge_tokenizers.py (PEFT's "
            "trainable tokens): far less memory than --modules_to_save embed_tokens,lm_head."
        },
    )
    peft_path: str | None = field(default=None, metadata={"help": "Continue training this saved LoRA adapter."})
    qlora: bool = field(default=False, metadata={"help": "QLoRA: 4-bit NF4 double-quantized base + LoRA."})

    def __post_init__(self) -> None:
        problems = []
        if self.lora_rank < 1:
            problems.append(f"--lora_rank {self.lora_rank} must be a positive integer (8-64 are common).")
        if self.lora_alpha <= 0:
            problems.append(f"--lora_alpha {self.lora_alpha:g} must be > 0 (often 2 x --lora_rank).")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"--lora_dropout {self.lora_dropout:g} must be in [0, 1), e.g. 0.05.")
        if self.train_new_token_rows and "embed_tokens" in (self.modules_to_save or ""):
            problems.append(
                "--train_new_token_rows trains the new rows only, --modules_to_save embed_tokens the whole matrix: "
                "choose one."
            )
        if self.train_new_token_rows and not self.use_peft:
            problems.append("--train_new_token_rows needs --use_peft True (full fine-tuning trains every row).")
        if problems:
            raise UserError("invalid arguments:\n  - " + "\n  - ".join(problems))


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A datasets hub name, or a local dataset folder (save_to_disk/load_dataset)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of --dataset_name."})
    train_file_dir: str | None = field(
        default=None, metadata={"help": "Folder of training files (.jsonl/.json/.txt), searched recursively."}
    )
    validation_file_dir: str | None = field(default=None, metadata={"help": "Folder of validation files."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training samples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval samples."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Redo tokenization instead of using the cache."})
    validation_split_percentage: float = field(
        default=1, metadata={"help": "Percent of training data held out for eval when no validation files are given."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "Skip malformed rows (counted in a summary) instead of stopping."}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.validation_split_percentage < 100:
            raise UserError(
                f"--validation_split_percentage {self.validation_split_percentage} is out of range; use 0 (no eval "
                "split) up to 99."
            )


@dataclass
class ChatArguments:
    template_name: str | None = field(
        default=None,
        metadata={
            "help": "Chat template name (see medgpt/chat/templates.py), or auto/None for the tokenizer's own chat "
            "template."
        },
    )
    tool_format: str | None = field(
        default=None, metadata={"help": "Text format of tool calls/results: default, qwen, glm4, llama3, mistral."}
    )


@dataclass
class LossArguments:
    loss_chunk_size: int = field(
        default=256,  # 1024 kept 0.5 GB more at the peak of a SmolLM2 SFT step on the CPU, at the same speed
        metadata={
            "help": "Token loss on labelled positions only, this many at a time, so full logits never exist "
            "(0 = the model's own loss; --use_liger_kernel on CUDA uses Liger's fused kernel instead)."
        },
    )

    def __post_init__(self) -> None:
        if self.loss_chunk_size < 0:
            raise UserError(f"--loss_chunk_size {self.loss_chunk_size} must be >= 0 (0 = the model's own loss).")


@dataclass
class PreferenceArguments:
    max_source_length: int = field(
        default=2048, metadata={"help": "Most prompt tokens kept (the oldest are cut first) in a preference pair."}
    )
    max_target_length: int = field(
        default=512, metadata={"help": "Most tokens of each answer; a longer answer is cut but keeps its stop token."}
    )

    def __post_init__(self) -> None:
        if self.max_source_length < 1 or self.max_target_length < 2:
            raise UserError(
                f"--max_source_length {self.max_source_length} / --max_target_length {self.max_target_length}: "
                "use at least 1 prompt token and 2 answer tokens (an answer keeps its stop token)."
            )


def _config_to_argv(path: str, parser: HfArgumentParser) -> list[str]:
    """Turn a YAML/JSON config into command-line tokens so argparse checks types and later CLI flags win."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path}: file not found.")
    try:
        text = file.read_text(encoding="utf-8")
        config = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise UserError(f"--config {path} is not valid {file.suffix.lstrip('.').upper() or 'YAML'}: {err}") from None
    if config is None:
        return []
    if not isinstance(config, dict):
        raise UserError(f"--config {path} must hold a mapping of flag names to values, got {type(config).__name__}.")
    known = {action.dest for action in parser._actions}
    argv: list[str] = []
    for key, value in config.items():
        if key not in known and f"--{key}" not in LEGACY_FLAGS:
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            raise UserError(f"--config {path}: unknown key {key!r}." + (f" Did you mean {hint[0]!r}?" if hint else ""))
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv.append(f"--{key}")
        argv.extend(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)
    return argv


# Flags MedicalGPT's scripts took under TRL's or older transformers' names -> ours. Applied only where a script has
# the new flag and not the old one; list values (TRL's --lora_target_modules q_proj v_proj) become a comma list.
# MedicalGPT's flag names, read as ours before parsing (a name a script declares itself is left alone).
LEGACY_FLAGS = {
    "--dtype": "--torch_dtype",
    "--sft_model_path": "--model_name_or_path",  # PPO's policy
    "--max_completion_length": "--response_length",  # PPO (GRPO declares its own)
    "--train_samples": "--max_train_samples",  # GRPO; -1 = all
    "--neft_alpha": "--neftune_noise_alpha",
    "--orpo_beta": "--beta",  # ORPO's odds-ratio weight  # the Trainer's NEFTune: right scale, training only
    "--lora_r": "--lora_rank",
    "--lora_target_modules": "--target_modules",
    "--warmup_ratio": "--warmup_steps",  # a float below 1 is a ratio of the total steps in transformers 5
    "--opd_lambda": "--lmbda",  # OPD: the share of on-policy steps (TRL GKD's name)
    "--opd_beta": "--beta",  # OPD: the generalized JSD's interpolation
    "--corpus_files": "--knowledge_dir",  # chatpdf.py's documents
    "--gen_model": "--base_model",  # chatpdf.py's answering model
    "--prompt_template_name": "--template_name",  # chatpdf.py
    "--int4": "--load_in_4bit",
    "--int8": "--load_in_8bit",
    "--batch_size": "--eval_batch_size",  # inference_multigpu_demo.py's prompts per process
}


def rename_legacy_flags(argv: list[str], parser: HfArgumentParser) -> list[str]:
    known = parser._option_string_actions
    renamed: list[str] = []
    index = 0
    while index < len(argv):
        flag, _, inline = argv[index].partition("=")
        target = LEGACY_FLAGS.get(flag)
        if target is None or flag in known or target not in known:
            renamed.append(argv[index])
            index += 1
            continue
        values = [inline] if inline else []
        index += 1
        while not inline and index < len(argv) and not argv[index].startswith("--"):
            values.append(argv[index])
            index += 1
        renamed += [target, ",".join(values)] if values else [target]
    return renamed


# The flags every chat stage shares; each stage script adds its own and its library config.
CHAT_STAGE_ARGUMENTS = (ModelArguments, LoraArguments, DataArguments, ChatArguments)
PAIR_STAGE_ARGUMENTS = (*CHAT_STAGE_ARGUMENTS, PreferenceArguments)
# Library defaults the RL stages change: a log entry per rollout batch, a small learning rate, the prompt columns kept.
RL_STAGE_DEFAULTS = {
    "do_train": True,
    "report_to": ["tensorboard"],
    "logging_steps": 1,
    "learning_rate": 1e-5,
    "remove_unused_columns": False,
}


def _accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def parse(types: tuple[type, ...], argv: list[str] | None = None, defaults: dict[str, Any] | None = None) -> tuple:
    """Parse CLI flags (and `--config file.yaml|json`, overridden by CLI flags) into the given dataclasses.

    Unknown flags are an error. `defaults` are a script's own defaults for library flags (e.g. report_to).
    A single `.json`/`.yaml` argument is read as a config file, as MedicalGPT's SFT script allowed.
    """
    # ModelArguments takes --trust_remote_code from the type that declares it (TRL configs do), else from ours;
    # scripts that load no model through ModelArguments get no such flag.
    wants_remote = any(issubclass(t, ModelArguments) for t in types)
    own_flag = wants_remote and not any(f.name == "trust_remote_code" and f.init for t in types for f in fields(t))
    training = any(issubclass(t, TrainingArguments) for t in types)
    extra = (RemoteCodeArguments,) * own_flag
    parser = HfArgumentParser((*types, *extra), allow_abbrev=False)
    parser.error = _usage_error  # one paragraph naming the flag, not argparse's whole usage text
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = dict(defaults or {})
    if training and not _accelerator_available():
        # On a machine without a GPU, training can only run on the CPU; say so instead of failing on --bf16.
        defaults.setdefault("use_cpu", True)
    parser.set_defaults(**defaults)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = ["--config", argv[0]]
    config_argv: list[str] = []
    while "--config" in argv or any(a.startswith("--config=") for a in argv):
        index = next(i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config="))
        if argv[index] == "--config":
            if index + 1 >= len(argv):
                raise UserError("--config needs a file path, e.g. --config sft.yaml")
            path = argv[index + 1]
            del argv[index : index + 2]
        else:
            path = argv.pop(index).split("=", 1)[1]
        config_argv += _config_to_argv(path, parser)
    argv = rename_legacy_flags(config_argv + argv, parser)
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except UserError:
        raise
    except ValueError as err:  # a library config's own check (TrainingArguments, TRL configs); it names the flag
        raise UserError(f"invalid arguments: {err}") from None
    if unknown:
        flags = [a for a in unknown if a.startswith("-")] or unknown
        hints = [
            f"{flag} -> {match[0]}"
            for flag in flags
            if (
                match := difflib.get_close_matches(flag.split("=")[0], parser._option_string_actions, n=1, cutoff=0.75)
            )
        ]
        raise UserError(
            f"unknown argument(s): {' '.join(unknown)}."
            + (f" Did you mean: {', '.join(hints)}?" if hints else "")
            + " Run with --help to list every flag."
        )
    remote = parsed.pop() if own_flag else None
    if wants_remote and remote is None:
        remote = next(p for p in parsed if any(f.name == "trust_remote_code" and f.init for f in fields(p)))
    for parsed_args in parsed:
        if isinstance(parsed_args, ModelArguments):
            parsed_args.trust_remote_code = remote.trust_remote_code
        if isinstance(parsed_args, TrainingArguments):
            check_training_values(parsed_args)
    return tuple(parsed)


def _usage_error(message: str) -> None:
    raise UserError(f"{message}. Run with --help to list every flag.")


def check_training_values(training_args: TrainingArguments) -> None:
    """Values the Trainer would only trip over later, with a library message that does not name the flag."""
    t = training_args
    problems = [
        message
        for bad, message in (
            (
                t.learning_rate < 0,
                f"--learning_rate {t.learning_rate:g} must be >= 0, e.g. 2e-5 (full) or 2e-4 (LoRA).",
            ),
            (
                t.per_device_train_batch_size < 1,
                f"--per_device_train_batch_size {t.per_device_train_batch_size} must be >= 1.",
            ),
            (
                t.per_device_eval_batch_size < 1,
                f"--per_device_eval_batch_size {t.per_device_eval_batch_size} must be >= 1.",
            ),
            (
                t.gradient_accumulation_steps < 1,
                f"--gradient_accumulation_steps {t.gradient_accumulation_steps} must be >= 1.",
            ),
            (
                t.do_train and t.max_steps <= 0 and t.num_train_epochs <= 0,
                f"--num_train_epochs {t.num_train_epochs:g} must be > 0 (or set --max_steps > 0).",
            ),
            (t.max_grad_norm < 0, f"--max_grad_norm {t.max_grad_norm:g} must be >= 0 (0 = no clipping)."),
            (t.save_strategy == "steps" and t.save_steps <= 0, f"--save_steps {t.save_steps:g} must be > 0."),
            (t.eval_strategy == "steps" and (t.eval_steps or 1) <= 0, f"--eval_steps {t.eval_steps} must be > 0."),
            (t.dataloader_num_workers < 0, f"--dataloader_num_workers {t.dataloader_num_workers} must be >= 0."),
            (
                (t.neftune_noise_alpha or 0) < 0,
                f"--neftune_noise_alpha (--neft_alpha) {t.neftune_noise_alpha} must be >= 0 (0 or unset = off).",
            ),
        )
        if bad
    ]
    if problems:
        raise UserError("invalid arguments:\n  - " + "\n  - ".join(problems))


def check_args(
    model_args: ModelArguments,
    lora_args: LoraArguments,
    data_args: DataArguments | None,
    training_args: TrainingArguments,
    output_args: OutputArguments | None = None,
) -> None:
    """Report every cross-flag problem at once, each with the fix; with `output_args`, then check the output folder
    (saving.check_output_dir: writable, and no earlier run silently started over)."""
    problems = []
    if not model_args.model_name_or_path:
        problems.append("--model_name_or_path is required (a local model folder or a hub id).")
    if model_args.load_in_4bit and model_args.load_in_8bit:
        problems.append("--load_in_4bit and --load_in_8bit exclude each other; pick one.")
    quantized = model_args.load_in_4bit or model_args.load_in_8bit or lora_args.qlora
    if quantized and not lora_args.use_peft:
        problems.append(
            "quantized weights cannot be fully fine-tuned; add --use_peft True or drop --load_in_*/--qlora."
        )
    if lora_args.peft_path and not lora_args.use_peft:
        problems.append(f"--peft_path {lora_args.peft_path} needs --use_peft True.")
    if lora_args.peft_path and not Path(lora_args.peft_path, "adapter_config.json").is_file():
        problems.append(
            f"--peft_path {lora_args.peft_path} holds no adapter_config.json; point it at a saved adapter."
        )
    if data_args is not None and training_args.do_train and not (data_args.train_file_dir or data_args.dataset_name):
        problems.append("no training data: pass --train_file_dir DIR or --dataset_name NAME.")
    for flag in ("train_file_dir", "validation_file_dir"):
        folder = getattr(data_args, flag, None)
        if folder and not Path(folder).is_dir():
            problems.append(f"--{flag} {folder} is not a directory.")
    if not lora_args.use_peft and model_args.dtype() == "float16" and training_args.fp16:
        problems.append(
            "full fine-tuning with --torch_dtype float16 and --fp16 cannot unscale fp16 gradients; use --torch_dtype "
            "bfloat16 --bf16, or --torch_dtype float32 --fp16."
        )
    if quantized and training_args.deepspeed and "3" in str(_zero_stage(training_args.deepspeed)):
        problems.append("4/8-bit loading does not work with DeepSpeed ZeRO-3; use zero2.json or drop quantization.")
    if problems:
        raise UserError("invalid arguments:\n  - " + "\n  - ".join(problems))
    if output_args is not None:
        from medgpt import saving  # imports the Trainer: only training scripts pay for it

        saving.check_output_dir(training_args, output_args)


def wants_eval(training_args: TrainingArguments) -> bool:
    return training_args.do_eval or training_args.eval_strategy != "no"


def check_eval_split(training_args: TrainingArguments, eval_set) -> None:
    """Fail before training, not at the first evaluation step, when evaluation has nothing to run on."""
    if training_args.eval_strategy != "no" and not eval_set:
        strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
        raise UserError(
            f"--eval_strategy {strategy} needs an eval split, but there is none: pass "
            "--validation_file_dir DIR or --validation_split_percentage > 0, or set --eval_strategy no."
        )


def _zero_stage(deepspeed: str | dict) -> int | None:
    if isinstance(deepspeed, dict):
        config = deepspeed
    else:
        try:
            config = json.loads(Path(deepspeed).read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return config.get("zero_optimization", {}).get("stage")


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def dataclass_flags(cls: type) -> list[str]:
    """Flag names a dataclass declares (for docs and tests)."""
    return [f"--{f.name}" for f in fields(cls)]
