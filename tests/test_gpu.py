"""GPU-only paths (run with MEDGPT_TEST_GPU=1 on a CUDA machine; skipped everywhere else, CI included)."""

import importlib.util
from pathlib import Path

import pytest
import torch

import supervised_finetuning

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
FLAGS = [
    "--train_file_dir",
    str(ROOT / "data" / "sft"),
    "--template_name",
    "chatml",
    "--max_steps",
    "3",
    "--per_device_train_batch_size",
    "2",
    "--validation_split_percentage",
    "0",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
]


def test_bf16_lora_sft_on_gpu(tiny_model_dir, tmp_path):
    trainer = supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(tmp_path),
            "--torch_dtype",
            "bfloat16",
            "--bf16",
            *FLAGS,
        ]
    )
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_packed_padding_free_sft_with_flash_attention(tiny_model_dir, tmp_path):
    trainer = supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(tmp_path),
            "--torch_dtype",
            "bfloat16",
            "--bf16",
            "--flash_attn",
            "True",
            "--packing",
            "True",
            *FLAGS,
        ]
    )
    assert trainer.model.config._attn_implementation == "flash_attention_2"
    assert trainer.data_collator.flatten


def test_qlora_sft_on_gpu(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from tiny_model import build_tiny_model

    wide = build_tiny_model(tmp_path / "wide", hidden=64)
    trainer = supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(wide),
            "--output_dir",
            str(tmp_path / "out"),
            "--qlora",
            "True",
            "--torch_dtype",
            "bfloat16",
            "--bf16",
            *FLAGS,
        ]
    )
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert trainer.state.global_step == 3
