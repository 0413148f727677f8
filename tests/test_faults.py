"""Runs that survive faults: a kill after a checkpoint and a stop signal both resume to the uninterrupted result,
diverged weights stop the run without saving, reruns into an earlier run's folder are refused, and a killed
final save or merge never leaves a model that looks complete but is not."""

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import assert_same_adapter, start_paused, write_jsonl
from safetensors.torch import load_file

import dpo_training
import merge_peft_adapter
import supervised_finetuning
from medgpt import atomic, saving
from medgpt.errors import UserError
from medgpt.model import load_saved

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"sft": supervised_finetuning, "dpo": dpo_training}


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    rows = [
        {"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]}
        for i in range(12)
    ]
    return write_jsonl(tmp_path_factory.mktemp("chat") / "train.jsonl", rows).parent


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    rows = [
        {
            "conversations": [{"from": "human", "value": f"Is dose {i} safe?"}],
            "chosen": f"Dose {i} is safe with food.",
            "rejected": "No idea.",
        }
        for i in range(12)
    ]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "train.jsonl", rows).parent


def stage_argv(stage: str, model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    argv = [
        "--model_name_or_path", str(model_dir), "--train_file_dir", str(data), "--template_name", "qwen",
        "--output_dir", str(out), "--max_steps", "6", "--save_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--report_to", "none", "--validation_split_percentage", "0", "--logging_steps", "1",
    ]  # fmt: skip
    if stage == "sft":
        argv += ["--packing", "False"]
    return argv + list(extra)


# ---------------------------------------------------------------- SIGKILL, then resume


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(
    stage, tiny_model_dir, chat_dir, pair_dir, tmp_path, caplog
):
    data = chat_dir if stage == "sft" else pair_dir
    whole = tmp_path / "whole"
    STAGES[stage].main(stage_argv(stage, tiny_model_dir, data, whole))

    killed = tmp_path / "killed"
    process = start_paused(
        STAGES[stage].__name__,
        stage_argv(stage, tiny_model_dir, data, killed),
        4,
        "after_checkpoint",
        tmp_path / "log",
    )
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert (killed / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (killed / "checkpoint-6").exists() and not (killed / "adapter_config.json").exists()

    # Plain resume, and resume with an empty checkpoint-6 as a kill while creating it would leave.
    with_empty = tmp_path / "with-empty"
    shutil.copytree(killed, with_empty)
    (with_empty / "checkpoint-6").mkdir()
    for out in (killed, with_empty):
        trainer = STAGES[stage].main(stage_argv(stage, tiny_model_dir, data, out, "--resume_from_checkpoint", "True"))
        assert trainer.state.global_step == 6
        assert_same_adapter(whole, out)
    assert "skipping" in caplog.text and "checkpoint-6" in caplog.text


# ---------------------------------------------------------------- stop signals


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_the_step_and_the_run_resumes_from_it(stop, tiny_model_dir, chat_dir, tmp_path):
    # No scheduled checkpoints: the one on disk afterwards can only come from the signal.
    out = tmp_path / "out"
    argv = stage_argv("sft", tiny_model_dir, chat_dir, out, "--save_strategy", "no")
    log = tmp_path / "log"
    process = start_paused("supervised_finetuning", argv, 2, "in_step", log)  # inside step 3
    process.send_signal(stop)
    assert process.wait(timeout=120) == 128 + stop, log.read_text()[-3000:]
    message = log.read_text()
    assert (
        f"stopped: {stop.name}: training stopped after step 3" in message
        and "--resume_from_checkpoint True" in message
    )
    assert "Traceback" not in message
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (out / "adapter_config.json").exists(), "an interrupted run must not look finished"

    supervised_finetuning.main([*argv, "--resume_from_checkpoint", "True"])
    supervised_finetuning.main(
        stage_argv("sft", tiny_model_dir, chat_dir, tmp_path / "whole", "--save_strategy", "no")
    )
    assert_same_adapter(tmp_path / "whole", out)


# ---------------------------------------------------------------- NaN / inf


def test_weights_that_turn_nan_stop_the_run_and_keep_the_last_good_checkpoint(
    tiny_model_dir, chat_dir, tmp_path, monkeypatch
):
    compute_loss = transformers.Trainer.compute_loss

    def nan_at_step_3(self, *args, **kwargs):
        loss = compute_loss(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 2 else loss

    monkeypatch.setattr(transformers.Trainer, "compute_loss", nan_at_step_3)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"stopped at step 3: the weights became NaN or inf") as error:
        supervised_finetuning.main(stage_argv("sft", tiny_model_dir, chat_dir, out, "--save_steps", "1"))
    assert "--learning_rate" in str(error.value) and str(out / "checkpoint-2") in str(error.value)
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-3").exists()
    assert not (out / "adapter_config.json").exists()
    weights = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


# ---------------------------------------------------------------- reruns and refusals


def test_a_rerun_into_an_earlier_run_is_refused_unless_resuming_or_overwriting(tiny_model_dir, chat_dir, tmp_path):
    out = tmp_path / "out"
    supervised_finetuning.main(stage_argv("sft", tiny_model_dir, chat_dir, out, "--max_steps", "4"))
    with pytest.raises(UserError, match=r"already holds an earlier run \(checkpoint-2, checkpoint-4, adapter_config"):
        supervised_finetuning.main(stage_argv("sft", tiny_model_dir, chat_dir, out, "--max_steps", "2"))
    supervised_finetuning.main(
        stage_argv("sft", tiny_model_dir, chat_dir, out, "--max_steps", "2", "--overwrite_output_dir", "True")
    )
    assert sorted(p.name for p in saving.checkpoints(out)) == ["checkpoint-2"]  # the earlier run's are gone
    assert (out / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora_rank", "0"], r"--lora_rank 0 must be a positive integer"),
        (["--lora_dropout", "1"], r"--lora_dropout 1 must be in \[0, 1\)"),
        (["--learning_rate", "-1"], r"--learning_rate -1 must be >= 0"),
        (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size 0 must be >= 1"),
        (["--max_steps", "ten"], r"--max_steps.*invalid int value: 'ten'"),
        (["--fp16", "True", "--bf16", "True"], r"fp16 and bf16"),
        (["--output_dir", "/proc/medgpt-out"], r"--output_dir /proc/medgpt-out is not writable"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(flags, message, tiny_model_dir, chat_dir, tmp_path):
    with pytest.raises(UserError, match=message):
        supervised_finetuning.main(stage_argv("sft", tiny_model_dir, chat_dir, tmp_path / "out", *flags))
    assert not (tmp_path / "out").exists()


def test_refusals_exit_2_with_one_paragraph_and_no_traceback(tiny_model_dir, chat_dir, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for flags, expected in (
        (["--lora_rank", "0"], "--lora_rank 0"),
        (["--output_dir", str(a_file)], f"--output_dir {a_file} is a file"),
    ):
        argv = stage_argv("sft", tiny_model_dir, chat_dir, tmp_path / "out", *flags)
        result = subprocess.run(
            [sys.executable, "supervised_finetuning.py", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "MEDGPT_ALLOCATOR": "system"},
        )
        assert result.returncode == 2 and expected in result.stderr
        assert "Traceback" not in result.stderr and "usage:" not in result.stderr


def test_a_full_disk_while_saving_is_a_clear_error_and_leaves_no_half_model(
    tiny_model_dir, chat_dir, tmp_path, monkeypatch
):
    def full_disk(self, output_dir=None, _internal_call=False):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        Path(output_dir, "adapter_model.safetensors").write_bytes(b"\0" * 10)  # half written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.Trainer, "save_model", full_disk)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"the disk is full: saving the final model to --output_dir .*--resume_from"):
        supervised_finetuning.main(stage_argv("sft", tiny_model_dir, chat_dir, out, "--save_strategy", "no"))
    assert not (out / saving.STAGING_DIR).exists()
    assert not (out / "adapter_model.safetensors").exists() and not (out / "adapter_config.json").exists()


# ---------------------------------------------------------------- atomic final model and merge


def test_a_final_save_cut_short_leaves_no_model_a_loader_accepts(tmp_path, monkeypatch):
    staging, out = tmp_path / "out" / saving.STAGING_DIR, tmp_path / "out"
    staging.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "tokenizer.json", "adapter_config.json"):
        (staging / name).write_text(name)
    (out / "adapter_config.json").write_text("from an earlier save")
    moved = []
    replace = os.replace

    def killed_after_two(source, target):
        if len(moved) == 2:
            raise KeyboardInterrupt  # the kill
        moved.append(Path(source).name)
        replace(source, target)

    monkeypatch.setattr(saving.os, "replace", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        atomic.publish(staging, out)
    assert "adapter_config.json" not in moved and not (out / "adapter_config.json").exists()
    monkeypatch.setattr(saving.os, "replace", replace)
    shutil.rmtree(out)
    staging.mkdir(parents=True)
    (staging / "adapter_config.json").write_text("{}")
    atomic.publish(staging, out)
    assert (out / "adapter_config.json").is_file() and not staging.exists()


MERGE_DRIVER = """
import sys, time
import transformers
import merge_peft_adapter
save = transformers.PreTrainedTokenizerBase.save_pretrained
def save_then_wait(self, *args, **kwargs):  # the weights are written by now; the tokenizer comes next
    result = save(self, *args, **kwargs)
    print("PAUSED", flush=True)
    time.sleep(600)
    return result
transformers.PreTrainedTokenizerBase.save_pretrained = save_then_wait
merge_peft_adapter.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, chat_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "sft"
    supervised_finetuning.main(stage_argv("sft", tiny_model_dir, chat_dir, out, "--max_steps", "2"))
    return out


@pytest.mark.parametrize("earlier", [False, True])
def test_a_killed_merge_leaves_the_output_absent_or_complete(earlier, tiny_model_dir, adapter_dir, tmp_path):
    out = tmp_path / "merged"
    argv = ["--base_model", str(tiny_model_dir), "--lora_model", str(adapter_dir), "--output_dir", str(out)]
    if earlier:  # a complete merged model from before, being replaced
        merge_peft_adapter.main(argv)
        argv += ["--overwrite", "True"]
    process = subprocess.Popen(
        [sys.executable, "-c", MERGE_DRIVER, *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert any(line.strip() == "PAUSED" for line in process.stdout)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if earlier:
        model, _, _ = load_saved(str(out))  # the earlier merge, whole
        assert model is not None
    else:
        assert not out.exists()
    merge_peft_adapter.main([*argv[:6], "--overwrite", "True"])  # a rerun completes; the leftover is harmless
    assert load_saved(str(out))[0] is not None
