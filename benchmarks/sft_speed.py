"""SFT speed and memory, side by side: the real SFT path under named configurations (padded or packed rows,
gradient checkpointing on or off, the model's own loss or the chunked one), and the peers a user would pick
instead on the same rows, model and settings: MedicalGPT's own `training/supervised_finetuning.py`, TRL's
SFTTrainer on its recommended path (benchmarks/trl_sft.py) and LLaMA-Factory. Prints a table and ratios, writes
JSON; asserts nothing.

Each measurement is its own process. With --repeats N the sides run in rotation (every side once, then again), so
slow spells of a noisy machine fall on all sides alike; the table shows medians. Peak memory is the peak resident
set (RSS) of the training process on CPU. Peers run in environments of their own (benchmarks/peers.py, created on
first use: LLaMA-Factory's takes a few minutes to install).

    python benchmarks/sft_speed.py --model models/SmolLM2-135M-Instruct --rows 32
    python benchmarks/sft_speed.py --configs "packed+chunked (default)" --peers medicalgpt,trl,llamafactory \
        --medicalgpt ../MedicalGPT --repeats 3          # the README's table
    python benchmarks/sft_speed.py --medicalgpt ../MedicalGPT --configs all    # every configuration, ratios
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import peers
from scratch import KEEP_HELP, scratch

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
    # LoRA dropout draws a random mask per input element of every adapted layer (twice under checkpointing: the
    # recompute draws it again); benchmarks/sft_profile.py puts it at a fifth of a CPU step.
    "packed+chunked, LoRA dropout 0": ([*PACKED, "--lora_dropout", "0"], {}),
    "packed+chunked, torch's LoRA dropout": (PACKED, {"MEDGPT_LORA_DROPOUT": "torch"}),  # before medgpt/dropout.py
    "packed+chunked, loss chunks of 1024": ([*PACKED, "--loss_chunk_size", "1024"], {}),  # the default before
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
    parser.add_argument(
        "--peers",
        default="",
        help=f"Comma-separated peers to run beside ours: {', '.join(PEERS)} (medicalgpt needs --medicalgpt).",
    )
    parser.add_argument("--medicalgpt", help="A MedicalGPT checkout (runs its training/supervised_finetuning.py)")
    parser.add_argument("--repeats", type=int, default=1, help="Rounds of every side, run in rotation")
    parser.add_argument("--peers_dir", default=str(peers.PEERS_DIR), help="Where the peers' environments live")
    parser.add_argument("--json", default="outputs/benchmarks/sft_speed.json")
    parser.add_argument("--keep_work", action="store_true", help=KEEP_HELP)
    options = parser.parse_args()
    if "all" in options.configs:
        options.configs = list(CONFIGS)
    chosen = [name for name in options.peers.split(",") if name] or (["medicalgpt"] if options.medicalgpt else [])
    unknown = [name for name in chosen if name not in PEERS]
    if unknown or ("medicalgpt" in chosen and not options.medicalgpt):
        parser.error(f"--peers {options.peers}: choose from {', '.join(PEERS)}; medicalgpt also needs --medicalgpt")

    with scratch("sft-bench-", report=options.json, keep=options.keep_work) as work:
        lines = Path(options.data).read_text(encoding="utf-8").splitlines()[: options.rows]
        (work / "data").mkdir()
        (work / "data" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("MEDGPT_ALLOCATOR", None)
        env["HF_DATASETS_CACHE"] = str(work / "cache")
        tokens = supervised_tokens(options.model, work / "data", options.length)
        setup = Setup(str(Path(options.model).resolve()), work, options.batch, options.length, options.medicalgpt)

        sides = {f"ours: {name}": (ROOT, *ours(setup, name)) for name in options.configs}
        for peer in chosen:
            python = peers.python(peer, Path(options.peers_dir))
            for name, (folder, command, extra_env) in PEERS[peer](setup, python).items():
                sides[name] = (folder, command, extra_env)
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for round_ in range(options.repeats):
            for name, (folder, command, extra_env) in sides.items():
                out = work / f"{''.join(c if c.isalnum() else '_' for c in name)}-{round_}"
                full = [*command, *output_flags(command, out)]
                wall, peak, code = run(full, folder, {**env, **extra_env}, work / f"{out.name}.log")
                runs[name].append(measure(name, out, wall, peak, code, tokens))
                print(row(runs[name][-1]), flush=True)
        results = [median_of(name, measured) for name, measured in runs.items()]
        print()
        print(table(results, tokens, options.repeats))
        print()
        print(ratios(results))
        environments = {peer: peers.freeze(peer, Path(options.peers_dir)) for peer in ["ours", *chosen]}
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        report = {"supervised_tokens": tokens, "results": results, "runs": runs, "environments": environments}
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON: {options.json}")


@dataclass
class Setup:
    """What every side shares: the model, the rows (in work/data/train.jsonl), batch size and length."""

    model: str
    work: Path
    batch: int
    length: int
    medicalgpt: str | None


def common_flags(setup: Setup) -> list[str]:
    """The flags our script and MedicalGPT's share (MedicalGPT's names are ours)."""
    return [
        *["--model_name_or_path", setup.model, "--train_file_dir", str(setup.work / "data")],
        *["--template_name", "chatml", "--model_max_length", str(setup.length), "--num_train_epochs", "1"],
        *["--per_device_train_batch_size", str(setup.batch), "--learning_rate", "2e-5", "--use_peft", "True"],
        *["--target_modules", "all", "--lora_rank", "8", "--lora_alpha", "16", "--torch_dtype", "float32"],
        *["--save_strategy", "no", "--report_to", "none", "--logging_steps", "1000", "--disable_tqdm", "True"],
        *["--seed", "42"],
    ]


def ours(setup: Setup, name: str) -> tuple[list[str], dict]:
    flags, extra_env = CONFIGS[name]
    command = [sys.executable, "supervised_finetuning.py", *common_flags(setup), *flags]
    return [*command, "--validation_split_percentage", "0"], extra_env


def output_flags(command: list[str], out: Path) -> list[str]:
    """Where a side writes: LLaMA-Factory reads it from its YAML file (written per run), the others take a flag."""
    if command[-1].endswith(".yaml"):
        config = Path(command[-1])
        config.write_text(config.read_text().split("output_dir:")[0] + f"output_dir: {out}\n")
        return []
    return ["--output_dir", str(out)]


def medicalgpt_sides(setup: Setup, python: str) -> dict:
    """MedicalGPT's SFT script with the flags its run_sft.sh sets (gradient checkpointing, --do_train)."""
    # Its split of 0% fails; an explicit validation folder (never evaluated) keeps all rows for training.
    flags = [*common_flags(setup), "--validation_file_dir", str(setup.work / "data")]
    command = [python, "training/supervised_finetuning.py", *flags, "--gradient_checkpointing", "True", "--do_train"]
    return {"MedicalGPT": (Path(setup.medicalgpt).resolve(), command, {})}


def trl_sides(setup: Setup, python: str) -> dict:
    """TRL's SFTTrainer: packing (best-fit decreasing, padding-free), completion-only loss, its default loss."""
    command = [python, str(ROOT / "benchmarks" / "trl_sft.py"), "--model", setup.model]
    command += ["--data", str(setup.work / "data" / "train.jsonl"), "--batch", str(setup.batch)]
    command += ["--max_length", str(setup.length)]
    return {"TRL (packing, padding-free)": (ROOT, command, {})}


def float32_copy(setup: Setup) -> str:
    """The model saved in float32. LLaMA-Factory loads weights with dtype "auto", the dtype in the checkpoint's
    config (bfloat16 for SmolLM2), and keeps the frozen base in it on a CPU whatever `bf16` says; the other sides
    load float32 by flag. A float32 checkpoint makes it run the workload every side runs."""
    folder = setup.work / "model-float32"
    if not folder.is_dir():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(setup.model, dtype=torch.float32).save_pretrained(folder)
        AutoTokenizer.from_pretrained(setup.model).save_pretrained(folder)
    return str(folder)


def llamafactory_sides(setup: Setup, python: str) -> dict:
    """LLaMA-Factory's `llamafactory-cli train` on a YAML file, as its examples/train_lora/*_sft.yaml set it
    (gradient checkpointing is on by default there), without and with its contamination-free packing."""
    rows = setup.work / "data" / "train.jsonl"
    data = setup.work / "llamafactory-data"  # apart from our training folder, which reads every file in it
    data.mkdir(exist_ok=True)
    columns = {"messages": "conversations"}
    info = {"medical": {"file_name": str(rows), "formatting": "sharegpt", "columns": columns}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    settings = {
        **{"model_name_or_path": float32_copy(setup), "stage": "sft", "do_train": True, "finetuning_type": "lora"},
        **{"lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lora_target": "all", "template": "chatml"},
        **{"dataset": "medical", "dataset_dir": str(data), "cutoff_len": setup.length, "overwrite_cache": True},
        **{"per_device_train_batch_size": setup.batch, "learning_rate": 2e-5, "num_train_epochs": 1.0},
        **{"bf16": False, "save_strategy": "no", "report_to": "none", "logging_steps": 1000, "seed": 42},
        **{"disable_tqdm": True, "plot_loss": False},
    }
    cli = str(Path(python).parent / "llamafactory-cli")
    sides = {}
    for name, extra in [("LLaMA-Factory", {}), ("LLaMA-Factory (neat_packing)", {"neat_packing": True})]:
        config = setup.work / f"llamafactory{len(sides)}.yaml"
        config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in {**settings, **extra}.items()))
        sides[name] = (ROOT, [cli, "train", str(config)], {"HF_DATASETS_CACHE": str(setup.work / f"lf{len(sides)}")})
    return sides


PEERS = {"medicalgpt": medicalgpt_sides, "trl": trl_sides, "llamafactory": llamafactory_sides}


def median_of(name: str, measured: list[dict]) -> dict:
    """The run with the median train time (the lower middle one for an even count) of every repeat."""
    done = sorted((r for r in measured if r["ok"]), key=lambda r: r["train_seconds"])
    chosen = done[(len(done) - 1) // 2] if done else measured[-1]
    return {
        **chosen,
        "config": name,
        "runs": len(measured),
        "train_seconds_all": [r["train_seconds"] for r in measured],
    }


def ratios(results: list[dict]) -> str:
    """Each of our configurations against each peer: how many times faster (train time), and peak RSS as a share."""
    ours_ = [r for r in results if r["config"].startswith("ours: ") and r["ok"]]
    others = [r for r in results if not r["config"].startswith("ours: ") and r["ok"]]
    if not ours_ or not others:
        return "(no peer ran: no ratios)"
    lines = [f"{'ours':<44} {'vs':<42} {'speed x':>8} {'memory x':>9}"]
    for mine in ours_:
        for other in others:
            speed = other["train_seconds"] / mine["train_seconds"]
            memory = mine["peak_rss_gb"] / other["peak_rss_gb"]
            lines.append(f"{mine['config'][6:]:<44} {other['config']:<42} {speed:8.2f} {memory:9.2f}")
    return "\n".join(lines)


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


def table(results: list[dict], tokens: int, repeats: int) -> str:
    lines = [f"{tokens} supervised tokens per epoch (our count); medians of {repeats} run(s) per side"]
    lines.append(f"{'side':<48} {'train s':>8} {'s/step':>7} {'steps':>5} {'sup tok/s':>10} {'peak GB':>8}")
    for r in results:
        lines.append(
            f"{r['config']:<48} {r['train_seconds']:8.1f} {r['seconds_per_step']:7.2f} {r['steps']:5d} "
            f"{r['supervised_tokens_per_second']:10.1f} {r['peak_rss_gb']:8.2f}{'' if r['ok'] else '  FAILED'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
