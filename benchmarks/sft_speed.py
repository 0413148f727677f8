"""SFT speed and memory, side by side: the real SFT path under named configurations (padded or packed rows,
gradient checkpointing on or off, the model's own loss or the chunked one), optionally against MedicalGPT's own
`training/supervised_finetuning.py` on the same rows. Prints a table and writes JSON; asserts nothing.

Each configuration runs as its own process, one after the other, so the figures compare within one run on one
machine. Peak memory is the peak resident set (RSS) of that process on CPU, allocated CUDA memory on a GPU.

    python benchmarks/sft_speed.py --model models/SmolLM2-135M-Instruct --rows 32
    python benchmarks/sft_speed.py --medicalgpt ../MedicalGPT --configs all    # every configuration, ratios
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = ROOT.parent / "shared" / "reference" / "medicalgpt-data" / "sft" / "medical_sft_1K_format.jsonl"
# name: (flags of supervised_finetuning.py, environment). All share LoRA r8 on every linear layer, fp32, the batch
# and the length. Our scripts restart with tcmalloc where it is installed (medgpt/allocator.py); the "glibc malloc"
# configuration keeps the system allocator, as MedicalGPT's script runs.
PACKED = ["--packing", "True", "--gradient_checkpointing", "True"]
CONFIGS = {
    "padded": (["--packing", "False", "--gradient_checkpointing", "True", "--loss_chunk_size", "0"], {}),
    "padded+chunked": (["--packing", "False", "--gradient_checkpointing", "True"], {}),
    "packed": ([*PACKED, "--loss_chunk_size", "0"], {}),
    "packed+chunked (default)": (PACKED, {}),
    "packed+chunked, glibc malloc": (PACKED, {"MEDGPT_ALLOCATOR": "system"}),
    "packed+chunked, checkpoint every 2nd layer": (
        [*PACKED, "--activation_checkpointing_kwargs", '{"every_n_layers": 2}'],
        {},
    ),
    "packed+chunked, no checkpointing": (["--packing", "True", "--gradient_checkpointing", "False"], {}),
}


def run(command: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in GB, exit code) of one process; its output goes to `log`."""
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # the resource usage of this process alone
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(log.read_text()[-2000:], file=sys.stderr)
    return time.perf_counter() - started, usage.ru_maxrss / 1024**2, code


def supervised_tokens(model: str, data_dir: Path, length: int) -> int:
    """Answer tokens the loss learns from (the same for every configuration and for MedicalGPT's script)."""
    from medgpt import data, tokenization
    from medgpt import model as models
    from medgpt.args import ChatArguments, DataArguments, ModelArguments

    tokenizer, template = models.load_chat_tokenizer(ModelArguments(model_name_or_path=model), ChatArguments("chatml"))
    rows = data.load_datasets(DataArguments(train_file_dir=str(data_dir), validation_split_percentage=0), "chat")
    tokenized = tokenization.tokenize_sft(rows["train"], tokenizer, template, length)
    return sum(sum(1 for label in labels[1:] if label != -100) for labels in tokenized["labels"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument(
        "--data", default=str(SAMPLE if SAMPLE.is_file() else ROOT / "data/sft/medical_sharegpt.jsonl")
    )
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["padded", "packed", "packed+chunked (default)"],
        choices=[*CONFIGS, "all"],
        help="Configurations to run (default: three, about 5 minutes on 2 cores; 'all' runs every one).",
    )
    parser.add_argument("--medicalgpt", help="A MedicalGPT checkout: also run its training/supervised_finetuning.py")
    parser.add_argument("--json", default="outputs/benchmarks/sft_speed.json")
    options = parser.parse_args()
    if "all" in options.configs:
        options.configs = list(CONFIGS)

    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    lines = Path(options.data).read_text(encoding="utf-8").splitlines()[: options.rows]
    (work / "data").mkdir()
    (work / "data" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MEDGPT_ALLOCATOR", None)
    env["HF_DATASETS_CACHE"] = str(work / "cache")
    tokens = supervised_tokens(options.model, work / "data", options.length)
    common = ["--model_name_or_path", str(Path(options.model).resolve()), "--train_file_dir", str(work / "data")]
    common += ["--template_name", "chatml", "--model_max_length", str(options.length), "--num_train_epochs", "1"]
    common += ["--per_device_train_batch_size", str(options.batch), "--learning_rate", "2e-5", "--use_peft", "True"]
    common += ["--target_modules", "all", "--lora_rank", "8", "--lora_alpha", "16", "--torch_dtype", "float32"]
    common += ["--validation_split_percentage", "0", "--save_strategy", "no", "--report_to", "none"]
    common += ["--logging_steps", "1000", "--disable_tqdm", "True", "--seed", "42"]

    results = []
    for name in options.configs:
        out = work / "".join(c if c.isalnum() else "_" for c in name)
        flags, extra_env = CONFIGS[name]
        command = [sys.executable, "supervised_finetuning.py", *common, *flags, "--output_dir", str(out)]
        wall, peak, code = run(command, ROOT, {**env, **extra_env}, work / f"{out.name}.log")
        results.append(measure(name, out, wall, peak, code, tokens))
        print(row(results[-1]), flush=True)
    if options.medicalgpt:
        checkout = Path(options.medicalgpt).resolve()
        out = work / "medicalgpt"
        command = [sys.executable, "training/supervised_finetuning.py", *common, "--output_dir", str(out)]
        # Its split of 0% fails; an explicit validation folder (never evaluated) keeps all rows for training.
        command[
            command.index("--validation_split_percentage") : command.index("--validation_split_percentage") + 2
        ] = [
            "--validation_file_dir",
            str(work / "data"),
        ]
        command += ["--gradient_checkpointing", "True", "--do_train"]  # as its run_sft.sh sets them
        wall, peak, code = run(command, checkout, env, work / "medicalgpt.log")
        results.append(measure("MedicalGPT", out, wall, peak, code, tokens))
        print(row(results[-1]), flush=True)
        reference = results[-1]
        for result in results[:-1]:
            if result["ok"] and reference["ok"]:
                result["speedup_vs_medicalgpt"] = reference["train_seconds"] / result["train_seconds"]
                result["memory_vs_medicalgpt"] = result["peak_rss_gb"] / reference["peak_rss_gb"]
    print()
    print(table(results, tokens))
    Path(options.json).parent.mkdir(parents=True, exist_ok=True)
    Path(options.json).write_text(json.dumps({"supervised_tokens": tokens, "results": results}, indent=2) + "\n")
    print(f"\nJSON: {options.json}")


def measure(name: str, out: Path, wall: float, peak: float, code: int, tokens: int) -> dict:
    metrics = json.loads((out / "train_results.json").read_text()) if (out / "train_results.json").is_file() else {}
    seconds = metrics.get("train_runtime", float("nan"))
    steps = (
        json.loads((out / "trainer_state.json").read_text())["global_step"]
        if (out / "trainer_state.json").is_file()
        else 0
    )
    return {
        "config": name,
        "ok": code == 0 and bool(metrics),
        "train_seconds": seconds,
        "wall_seconds": wall,
        "steps": steps,
        "seconds_per_step": seconds / steps if steps else float("nan"),
        "supervised_tokens_per_second": tokens / seconds if seconds == seconds and seconds else float("nan"),
        "peak_rss_gb": peak,
    }


def row(result: dict) -> str:
    status = "" if result["ok"] else "  FAILED"
    return (
        f"{result['config']:<44} train {result['train_seconds']:7.1f} s  steps {result['steps']:3d}  "
        f"{result['seconds_per_step']:6.2f} s/step  {result['supervised_tokens_per_second']:7.1f} sup tok/s  "
        f"peak RSS {result['peak_rss_gb']:5.2f} GB{status}"
    )


def table(results: list[dict], tokens: int) -> str:
    lines = [f"{tokens} supervised tokens per epoch", f"{'configuration':<44} {'train s':>8} {'s/step':>7} "
             f"{'sup tok/s':>10} {'peak GB':>8} {'speed x':>8} {'memory x':>9}"]  # fmt: skip
    for r in results:
        speed = f"{r['speedup_vs_medicalgpt']:.2f}" if "speedup_vs_medicalgpt" in r else "-"
        memory = f"{r['memory_vs_medicalgpt']:.2f}" if "memory_vs_medicalgpt" in r else "-"
        lines.append(
            f"{r['config']:<44} {r['train_seconds']:8.1f} {r['seconds_per_step']:7.2f} "
            f"{r['supervised_tokens_per_second']:10.1f} {r['peak_rss_gb']:8.2f} {speed:>8} {memory:>9}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
