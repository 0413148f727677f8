"""--resume_from_checkpoint: True resumes from the newest complete checkpoint (a partial one is skipped) and ends
where an uninterrupted run ends; a path that is no checkpoint is a clear error."""

import shutil

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file

import supervised_finetuning
from medgpt.errors import UserError


def sft_argv(model_dir, data, out, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--train_file_dir", str(data), "--template_name", "qwen",
        "--output_dir", str(out), "--max_steps", "6", "--save_steps", "2", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--report_to", "none", "--validation_split_percentage", "0", "--logging_steps", "1",
        "--packing", "False", *extra,
    ]  # fmt: skip


@pytest.fixture
def data(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]}
        for i in range(10)
    ]
    return write_jsonl(tmp_path / "d" / "train.jsonl", rows).parent


def test_resume_true_skips_a_partial_checkpoint_and_matches_an_uninterrupted_run(
    tiny_model_dir, data, tmp_path, caplog
):
    out = tmp_path / "out"
    supervised_finetuning.main(sft_argv(tiny_model_dir, data, out))
    whole = load_file(out / "adapter_model.safetensors")
    # As if killed after checkpoint-4 was written and while checkpoint-6 was being written.
    shutil.rmtree(out / "checkpoint-6")
    (out / "checkpoint-6").mkdir()
    (out / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"")
    (out / "adapter_model.safetensors").unlink()
    trainer = supervised_finetuning.main(sft_argv(tiny_model_dir, data, out, "--resume_from_checkpoint", "True"))
    assert "skipping" in caplog.text and "checkpoint-6" in caplog.text
    assert trainer.state.global_step == 6
    resumed = load_file(out / "adapter_model.safetensors")
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("value", "message"),
    [("True", r"holds no complete checkpoint-N folder"), ("nowhere/checkpoint-3", r"nowhere/checkpoint-3: not a")],
)
def test_resume_from_nothing_usable_is_a_clear_error(tiny_model_dir, data, tmp_path, value, message):
    with pytest.raises(UserError, match=message):
        supervised_finetuning.main(sft_argv(tiny_model_dir, data, tmp_path / "out", "--resume_from_checkpoint", value))
