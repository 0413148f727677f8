"""Launch files: run_*.sh flags parse with their scripts, DeepSpeed configs defer to the Trainer and run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dpo_training
import grpo_training
import opd_training
import orpo_training
import ppo_training
import pretraining
import reward_modeling
import supervised_finetuning
from medgpt import args

ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPTS = {
    "run_pt.sh": pretraining,
    "run_sft.sh": supervised_finetuning,
    "run_rm.sh": reward_modeling,
    "run_dpo.sh": dpo_training,
    "run_orpo.sh": orpo_training,
    "run_ppo.sh": ppo_training,
    "run_grpo.sh": grpo_training,
    "run_opd.sh": opd_training,
}


def script_flags(path: Path, script_name: str, tmp_path: Path, **env: str) -> list[str]:
    """The flags a run_*.sh passes to its Python script: it runs with a stand-in torchrun that records them."""
    stub = tmp_path / "bin" / "torchrun"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stub.chmod(0o755)
    environment = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "MODEL": "MODEL_VALUE", **env}
    result = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=environment, check=True)
    argv = json.loads(result.stdout)
    return argv[argv.index(script_name) + 1 :]


@pytest.mark.parametrize("run_script", sorted(RUN_SCRIPTS))
def test_run_script_flags_parse(run_script, tmp_path):
    path = ROOT / run_script
    module = RUN_SCRIPTS[run_script]
    flags = script_flags(path, Path(module.__file__).name, tmp_path)
    parsed = args.parse(module.ARG_TYPES, flags, module.DEFAULTS)
    training_args = parsed[-1]
    assert training_args.output_dir.startswith("outputs-")
    model_path = parsed[0].model_name_or_path  # PPO's --sft_model_path is MedicalGPT's name for it
    assert model_path == "MODEL_VALUE"


@pytest.mark.parametrize("run_script", sorted(RUN_SCRIPTS))
def test_run_scripts_take_data_output_and_deepspeed_from_the_environment(run_script, tmp_path):
    module = RUN_SCRIPTS[run_script]
    flags = script_flags(
        ROOT / run_script,
        Path(module.__file__).name,
        tmp_path,
        DATA="my-data",
        OUTPUT="my-out",
        DEEPSPEED="zero2.json",
    )
    for flag, value in (("--train_file_dir", "my-data"), ("--output_dir", "my-out"), ("--deepspeed", "zero2.json")):
        assert flags[flags.index(flag) + 1] == value


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_deepspeed_configs_leave_batch_sizes_and_precision_to_the_trainer(config):
    ds = json.loads((ROOT / config).read_text())
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert ds[key] == "auto", key
    assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"
    assert "optimizer" not in ds and "scheduler" not in ds, "the Trainer's --lr_scheduler_type must apply"
    assert ds["zero_optimization"]["stage"] == int(config[4])


@pytest.mark.slow
@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_deepspeed_single_process_sft_on_cpu(config, tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "supervised_finetuning.py",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "sft"),
            "--template_name",
            "chatml",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--validation_split_percentage",
            "0",
            "--deepspeed",
            config,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_training_scripts_restart_with_tcmalloc_where_installed(tmp_path):
    from medgpt.allocator import tcmalloc_library

    if tcmalloc_library() is None:
        pytest.skip("tcmalloc is not installed (make test installs libtcmalloc-minimal4 as root)")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\nfrom medgpt.allocator import restart_with_tcmalloc  # the installed package\n"
        "restart_with_tcmalloc()\nprint(os.environ.get('LD_PRELOAD', ''), sys.argv[2])\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "MEDGPT_ALLOCATOR")}
    result = subprocess.run([sys.executable, str(probe), str(ROOT), "kept"], env=env, capture_output=True, text=True)
    assert "libtcmalloc_minimal" in result.stdout and result.stdout.strip().endswith("kept"), result.stderr
    env["MEDGPT_ALLOCATOR"] = "system"
    result = subprocess.run([sys.executable, str(probe), str(ROOT), "kept"], env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "kept"
