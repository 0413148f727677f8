"""Argument parsing: --config files with CLI overrides, unknown flags, cross-flag checks, --help for every script."""

import importlib
import json

import pytest
from transformers import TrainingArguments

from medgpt import args
from medgpt.errors import UserError

SCRIPTS = [
    "pretraining",
    "supervised_finetuning",
    "reward_modeling",
    "dpo_training",
    "orpo_training",
    "opd_training",
    "merge_peft_adapter",
    "inference",
    "tools.prepare_model",
    "tools.convert_dataset",
    "tools.validate_jsonl",
    "tools.dedup",
    "tools.check_contamination",
    "tools.scan_phi",
    "tools.generate_dialogues",
    "tools.model_quant",
    "tools.eval_quantize",
    "tools.export_gguf",
    "tools.lm_eval_task",
]
TYPES = (args.ModelArguments, args.LoraArguments, args.DataArguments, TrainingArguments)


def test_yaml_config_with_cli_override(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(
        "model_name_or_path: m\nlora_rank: 4\nlearning_rate: 0.001\nreport_to: [none]\noutput_dir: out\n"
    )
    model_args, lora_args, _, training_args = args.parse(TYPES, ["--config", str(config), "--lora_rank", "16"])
    assert model_args.model_name_or_path == "m"
    assert lora_args.lora_rank == 16, "the CLI flag wins over the file"
    assert training_args.learning_rate == 0.001 and training_args.output_dir == "out"


def test_single_json_argument_is_a_config(tmp_path):
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"model_name_or_path": "m", "use_peft": False, "output_dir": "o"}))
    _, lora_args, _, _ = args.parse(TYPES, [str(config)])
    assert lora_args.use_peft is False


def test_unknown_config_key_is_an_error_with_a_hint(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("lora_rnak: 4\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown key 'lora_rnak'. Did you mean 'lora_rank'"):
        args.parse(TYPES, ["--config", str(config)])


def test_unknown_flag_is_an_error_with_a_hint():
    with pytest.raises(UserError, match="unknown argument.*--lora_rnak 4.*--lora_rnak -> --lora_rank"):
        args.parse(TYPES, ["--model_name_or_path", "m", "--lora_rnak", "4"])


def test_abbreviated_flags_are_not_guessed():
    with pytest.raises(UserError, match="--lora_ran"):
        args.parse(TYPES, ["--model_name_or_path", "m", "--lora_ran", "4"])


def test_medicalgpt_legacy_flag_names_are_renamed():
    model_args, lora_args, _, training_args = args.parse(
        TYPES, ["--model_name_or_path", "m", "--lora_r", "4", "--dtype=float32", "--warmup_ratio", "0.1"]
    )
    assert lora_args.lora_rank == 4 and model_args.torch_dtype == "float32" and training_args.warmup_steps == 0.1


def test_cpu_machine_defaults_to_cpu_training():
    _, _, _, training_args = args.parse(TYPES, ["--model_name_or_path", "m", "--bf16"])
    assert training_args.use_cpu and training_args.bf16


def test_check_args_reports_every_problem_at_once(tmp_path):
    model_args = args.ModelArguments(load_in_4bit=True, load_in_8bit=True)
    lora_args = args.LoraArguments(use_peft=False, peft_path=str(tmp_path))
    data_args = args.DataArguments(train_file_dir=str(tmp_path / "missing"))
    with pytest.raises(UserError) as err:
        args.check_args(model_args, lora_args, data_args, TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    message = str(err.value)
    for text in (
        "--model_name_or_path is required",
        "exclude each other",
        "cannot be fully fine-tuned",
        "--peft_path",
        "is not a directory",
    ):
        assert text in message


def test_medicalgpt_names_are_rows_of_the_legacy_table(tmp_path):
    """--neft_alpha is the Trainer's --neftune_noise_alpha, parsed as such: nothing is set after parsing."""
    import supervised_finetuning

    argv = ["--model_name_or_path", "m", "--train_file_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    parsed = args.parse(supervised_finetuning.ARG_TYPES, [*argv, "--neft_alpha", "5"], supervised_finetuning.DEFAULTS)
    assert parsed[-1].neftune_noise_alpha == 5
    with pytest.raises(UserError, match="--neftune_noise_alpha .*-1"):
        args.parse(supervised_finetuning.ARG_TYPES, [*argv, "--neft_alpha", "-1"], supervised_finetuning.DEFAULTS)


def test_validation_split_range():
    with pytest.raises(UserError, match="--validation_split_percentage 150"):
        args.DataArguments(validation_split_percentage=150)


def test_flash_attn_flag_selects_flash_attention():
    assert args.ModelArguments(flash_attn=True).attention() == "flash_attention_2"
    assert args.ModelArguments(device_map="None").placement() is None
    assert args.ModelArguments(torch_dtype="auto").dtype() is None


def test_eval_strategy_without_eval_split_fails_early(tmp_path):
    training_args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, eval_strategy="steps")
    with pytest.raises(UserError, match="needs an eval split"):
        args.check_eval_split(training_args, None)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_works_for_every_script(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_medicalgpt_flag_names_are_kept():
    flags = {
        f
        for cls in (args.ModelArguments, args.LoraArguments, args.DataArguments, args.ChatArguments)
        for f in args.dataclass_flags(cls)
    }
    for name in (
        "model_name_or_path",
        "tokenizer_name_or_path",
        "train_file_dir",
        "validation_file_dir",
        "dataset_name",
        "template_name",
        "use_peft",
        "target_modules",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "modules_to_save",
        "peft_path",
        "load_in_4bit",
        "load_in_8bit",
        "qlora",
        "max_train_samples",
        "max_eval_samples",
        "validation_split_percentage",
        "preprocessing_num_workers",
        "torch_dtype",
        "device_map",
        "trust_remote_code",
        "flash_attn",
        "rope_scaling",
        "tool_format",
        "cache_dir",
        "overwrite_cache",
    ):
        assert f"--{name}" in flags, name
