"""tools/model_quant.py and tools/eval_quantize.py: a 4-bit and an 8-bit copy that inference, the API server,
evaluate_model.py and QLoRA training load as they are, with logits near the original's; the comparison table from
evaluate_model.py's sections; bad input named, nothing half-written; the run_*.sh wrappers parse."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from conftest import running
from transformers import AutoModelForCausalLM

import evaluate_model
import openai_api
import supervised_finetuning
from medgpt import args
from medgpt.engine import ChatEngine
from medgpt.errors import UserError
from tools import eval_quantize, model_quant

pytest.importorskip("bitsandbytes")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory) -> Path:
    """The tiny model with every matrix dimension a multiple of bitsandbytes' 64-value quantization block: on CPUs
    with AVX512-BF16 its 4-bit layers repack their weights in blocks for the CPU kernel, which fails on the
    32-wide tiny model (real models' dimensions are multiples of 64)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide") / "model", hidden=64)


@pytest.fixture(scope="module")
def quantized(wide_model_dir, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("quantized")
    folders = {}
    for bits in (4, 8):
        folders[bits] = root / f"bnb{bits}"
        flags = ["--unquantized_model_path", str(wide_model_dir), "--quantized_model_output_path", str(folders[bits])]
        summary = model_quant.main([*flags, "--bits", str(bits), "--input_text", "Hello", "--max_new_tokens", "4"])
        assert summary["bits"] == bits and "quantized_answer" in summary
    return folders


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_folder_records_its_quantization_and_stays_close(quantized, wide_model_dir, bits):
    config = json.loads((quantized[bits] / "config.json").read_text())
    assert config["quantization_config"]["load_in_4bit" if bits == 4 else "load_in_8bit"] is True
    if bits == 4:
        assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
        assert config["quantization_config"]["bnb_4bit_use_double_quant"] is True
    original = AutoModelForCausalLM.from_pretrained(wide_model_dir, dtype=torch.float32)
    loaded = ChatEngine.load(str(quantized[bits])).model
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        expected, got = original(ids).logits, loaded(ids).logits.float()
    assert (expected - got).abs().max() <= (0.3 if bits == 4 else 0.05) * expected.abs().max()


@pytest.mark.parametrize("bits", [4, 8])
def test_inference_server_and_evaluation_load_it_as_it_is(quantized, bits, tmp_path):
    engine = ChatEngine.load(str(quantized[bits]), template_name="chatml")
    assert isinstance(engine.reply([{"role": "user", "content": "Hi"}], max_new_tokens=4).text, str)
    with running(openai_api.build_app(openai_api.ServerArguments(max_new_tokens=4), engine, "q")) as base:
        body = {"model": "q", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).status_code == 200
    results = evaluate_model.main(
        ["--base_model", str(quantized[bits]), "--template_name", "chatml", "--chat_file", "data/eval/sft"]
        + ["--mcq_file", "data/eval/mcq", "--max_samples", "3"]
    )
    assert results["chat"]["rows"] == 3 and results["mcq"]["questions"] == 3


def test_qlora_training_starts_from_the_saved_4bit_model(quantized, tmp_path):
    out = tmp_path / "qlora"
    supervised_finetuning.main(
        ["--model_name_or_path", str(quantized[4]), "--train_file_dir", "data/sft", "--template_name", "chatml"]
        + ["--output_dir", str(out), "--use_peft", "True", "--max_steps", "2", "--per_device_train_batch_size", "2"]
        + ["--report_to", "none", "--save_strategy", "no", "--validation_split_percentage", "0"]
        + ["--max_train_samples", "8", "--disable_tqdm", "True"]
    )
    assert (out / "adapter_model.safetensors").is_file()


def test_eval_quantize_compares_original_and_copies(quantized, wide_model_dir, tmp_path, capsys):
    out = tmp_path / "quant.json"
    rows = eval_quantize.main(
        ["--base_model", str(wide_model_dir), "--bnb_path", str(quantized[4]), str(quantized[8])]
        + ["--data_path", "data/eval/sft", "--mcq_file", "data/eval/mcq", "--max_samples", "3"]
        + ["--num_prompts", "2", "--max_new_tokens", "4", "--template_name", "chatml", "--output_file", str(out)]
    )
    assert [row["model"] for row in rows] == [str(wide_model_dir), str(quantized[4]), str(quantized[8])]
    table = capsys.readouterr().out
    assert table.startswith("| model | size_mb | peak_memory_mb | perplexity | mcq_accuracy | tokens_per_second |")
    original = rows[0]["perplexity"]
    assert all(abs(row["perplexity"] - original) <= 0.1 * original for row in rows)
    assert all(row["peak_memory_mb"] > 0 and row["tokens_per_second"] > 0 and len(row["answers"]) == 2 for row in rows)
    assert json.loads(out.read_text()) == rows


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bits", "3"], "--bits 3: bitsandbytes quantizes to 4 or 8 bits"),
        (["--quant_type", "int4"], "--quant_type int4: use one of nf4, fp4"),
        (["--compute_dtype", "half"], "--compute_dtype half"),
    ],
)
def test_bad_quantization_flags_are_named(tiny_model_dir, tmp_path, flags, message):
    out = tmp_path / "q"
    with pytest.raises(UserError, match=message):
        model_quant.main(
            ["--unquantized_model_path", str(tiny_model_dir), "--quantized_model_output_path", str(out)] + flags
        )
    assert not out.exists()


def test_missing_model_existing_output_and_no_backend_are_named(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "q"
    with pytest.raises(UserError, match="no config.json"):
        model_quant.main(["--unquantized_model_path", str(tmp_path), "--quantized_model_output_path", str(out)])
    out.mkdir()
    (out / "keep.txt").write_text("x")
    flags = ["--unquantized_model_path", str(tiny_model_dir), "--quantized_model_output_path", str(out)]
    with pytest.raises(UserError, match="exists; pass --overwrite True"):
        model_quant.main(flags)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(UserError, match="quantization needs bitsandbytes"):
        model_quant.main([*flags, "--overwrite", "True"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"], "the old output is left as it was"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("script", "tool"), [("run_quant.sh", model_quant), ("run_eval_quantize.sh", eval_quantize)])
def test_run_scripts_parse_with_their_tools(script, tool, tmp_path):
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "MODEL": "merged"}
    argv = json.loads(subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True, env=env).stdout)
    assert argv[0] == f"tools/{Path(tool.__file__).name}"
    parsed = args.parse(
        (model_quant.QuantArguments,) if tool is model_quant else (eval_quantize.EvalQuantArguments,), argv[1:]
    )
    assert "merged" in json.dumps([vars(p) for p in parsed])
