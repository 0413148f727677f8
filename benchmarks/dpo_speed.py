"""DPO step time with and without cached reference log-probs, optionally against MedicalGPT's own
`training/dpo_training.py` on the same pairs; asserts nothing.

Our three runs: the reference forward on every step (TRL's default), the first run with --precompute_ref_log_probs
(computes and caches them), and a second identical run (reads the cache: no reference forward at all). With
--medicalgpt, MedicalGPT's script runs last, on its default path (reference forward every step), with the Python of
benchmarks/peers.py. TRL 1.16's `padding_free` for DPO is disabled upstream (it falls back to padding) and our DPO
has no packing of its own, so neither is measured.

Every side: LoRA r8 on all linear layers, fp32 (no bf16 autocast), gradient checkpointing, no evaluation, the same
batch and lengths. With --medicalgpt, both sides get the same pairs, chosen so that neither drops nor cuts any
(see whole_for_both), and both save one checkpoint after the last step (MedicalGPT's cannot be turned off). s/step
is train_runtime / global_step; peak memory is the peak resident set (RSS) of each process.

    python benchmarks/dpo_speed.py --model models/SmolLM2-135M-Instruct --pairs 16 --steps 4
    python benchmarks/dpo_speed.py --medicalgpt ../MedicalGPT --pairs 16 --steps 8    # ratios vs MedicalGPT
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

from scratch import KEEP_HELP, scratch
from sft_speed import ROOT, run

SAMPLE = ROOT.parent / "shared" / "reference" / "medicalgpt-data" / "reward" / "dpo_zh_500.jsonl"
PAIRS = SAMPLE if SAMPLE.is_file() else ROOT / "data" / "reward" / "medical_pairs.jsonl"
# Upper bounds on what the chat templates add around a pair: MedicalGPT's chatml adds 89 characters (its default
# system prompt and the turn markers); in tokens, ours adds about 12 and MedicalGPT's about 20.
TEMPLATE_CHARS = 96
TEMPLATE_TOKENS = 24
TARGET_SPEEDUP = 1.5


def whole_for_both(row: dict, tokenizer, source: int, target: int) -> bool:
    """Whether neither side drops or cuts this pair. MedicalGPT's script drops a pair whose rendered prompt plus
    answer is longer than source + target *characters* and TRL then cuts it at source + target tokens; ours cuts a
    prompt over `source` tokens and an answer over `target` tokens. Pairs kept whole by both give both sides the
    same tokens, so their step times compare."""
    question = "".join(turn["value"] for turn in row["conversations"])
    answers = [str(row["chosen"]), str(row["rejected"])]
    if len(question) + max(map(len, answers)) + TEMPLATE_CHARS > source + target:
        return False
    tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in (question, *answers)]
    return tokens[0] + TEMPLATE_TOKENS <= source and max(tokens[1:]) + 1 <= target  # + 1: the stop token


def measure(name: str, out: Path, wall: float, peak: float, code: int) -> dict:
    """One run's figures from what the Trainer wrote: train_runtime (the training loop alone: not loading, data
    preparation or the save after training) over the optimizer steps it actually ran."""
    results, state = out / "train_results.json", out / "trainer_state.json"
    metrics = json.loads(results.read_text()) if results.is_file() else {}
    seconds = metrics.get("train_runtime", float("nan"))
    steps = json.loads(state.read_text())["global_step"] if state.is_file() else 0
    return {
        "run": name,
        "ok": code == 0 and steps > 0,
        "steps": steps,
        "train_seconds": seconds,
        "seconds_per_step": seconds / steps if steps else float("nan"),
        "tokens": metrics.get("num_tokens"),  # TRL's count of the tokens its steps saw, padding excluded
        "wall_seconds": wall,
        "peak_rss_gb": peak,
    }


def row(result: dict) -> str:
    speed = result.get("speedup_vs_medicalgpt")
    return (
        f"{result['run']:<34} wall {result['wall_seconds']:6.1f} s  train {result['train_seconds']:6.1f} s  "
        f"steps {result['steps']:3d}  {result['seconds_per_step']:6.2f} s/step  "
        f"peak RSS {result['peak_rss_gb']:5.2f} GB"
        + (f"  {speed:5.2f}x MedicalGPT" if speed is not None else "")
        + ("" if result["ok"] else "  FAILED")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--data", default=str(PAIRS), help="Preference pairs (.jsonl, MedicalGPT's format)")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max_source_length", type=int, default=192, help="Prompt tokens")
    parser.add_argument("--max_target_length", type=int, default=192, help="Answer tokens")
    parser.add_argument("--medicalgpt", help="A MedicalGPT checkout: also run its training/dpo_training.py")
    parser.add_argument("--json", default="outputs/benchmarks/dpo_speed.json")
    parser.add_argument("--keep_work", action="store_true", help=KEEP_HELP)
    options = parser.parse_args()
    source, target = options.max_source_length, options.max_target_length
    model = str(Path(options.model).resolve())

    with scratch("dpo-bench-", report=options.json, keep=options.keep_work) as work:
        (work / "pairs").mkdir()
        lines = Path(options.data).read_text(encoding="utf-8").splitlines()
        if options.medicalgpt:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
            lines = [line for line in lines if whole_for_both(json.loads(line), tokenizer, source, target)]
            print(f"{len(lines)} pairs of {options.data} fit both sides whole at {source}+{target} tokens")
            if not lines:
                sys.exit("no pair fits both sides whole: raise --max_source_length / --max_target_length")
        lines = lines[: options.pairs]
        print(f"{len(lines)} pairs, batch {options.batch}, {options.steps} steps", flush=True)
        (work / "pairs" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(work / "cache"),
        }
        shared = ["--model_name_or_path", model, "--train_file_dir", str(work / "pairs"), "--template_name", "chatml"]
        shared += ["--max_steps", str(options.steps), "--per_device_train_batch_size", str(options.batch)]
        shared += ["--gradient_accumulation_steps", "1", "--max_source_length", str(source)]
        shared += [
            "--max_target_length",
            str(target),
            "--validation_split_percentage",
            "0",
            "--torch_dtype",
            "float32",
        ]
        # TRL's configs default to bf16=True, which on a CPU means bf16 autocast: fp32 has to be asked for.
        shared += ["--bf16", "False", "--fp16", "False", "--gradient_checkpointing", "True", "--use_peft", "True"]
        shared += ["--target_modules", "all", "--lora_rank", "8", "--lora_alpha", "16", "--lora_dropout", "0.05"]
        shared += ["--eval_strategy", "no", "--logging_steps", "1000", "--report_to", "none"]
        # MedicalGPT's script has no --save_strategy (unknown flags are ignored), so its Trainer saves a checkpoint
        # after the last step, inside train_runtime; ours then saves one there too, and nothing else in between.
        saves = ["--save_strategy", "steps", "--save_steps", str(options.steps)] if options.medicalgpt else []
        ours = [*shared, "--max_length", str(source + target), "--disable_tqdm", "True"]
        ours += saves or ["--save_strategy", "no"]
        runs = [
            ("reference forward every step", ["--precompute_ref_log_probs", "False"]),
            ("precompute + cache (first run)", ["--precompute_ref_log_probs", "True"]),
            ("cached reference log-probs", ["--precompute_ref_log_probs", "True"]),
        ]
        results = []
        for index, (name, flags) in enumerate(runs):
            out = work / f"run{index}"
            command = [sys.executable, "dpo_training.py", *ours, *flags, "--output_dir", str(out)]
            results.append(measure(name, out, *run(command, ROOT, env, work / f"run{index}.log")))
            print(row(results[-1]), flush=True)
        trained_pairs = None
        if options.medicalgpt:
            from peers import python

            out = work / "medicalgpt"
            command = [python("medicalgpt"), "training/dpo_training.py", *shared, *saves, "--do_train"]
            command += ["--remove_unused_columns", "False", "--output_dir", str(out)]  # as its run_dpo.sh sets it
            log = work / "medicalgpt.log"
            results.append(measure("MedicalGPT", out, *run(command, Path(options.medicalgpt).resolve(), env, log)))
            # Its train_samples metric counts pairs before its length filter; the log line counts those it kept.
            kept = re.search(r"Num train_samples: (\d+)", log.read_text(errors="replace"))
            trained_pairs = int(kept.group(1)) if kept else None
            if trained_pairs != len(lines):
                print(f"MedicalGPT kept {trained_pairs} of the {len(lines)} pairs: the step times do not compare")
            reference = results[-1]
            for result in results[:-1]:
                if result["ok"] and reference["ok"]:
                    result["speedup_vs_medicalgpt"] = reference["seconds_per_step"] / result["seconds_per_step"]
                    result["memory_vs_medicalgpt"] = result["peak_rss_gb"] / reference["peak_rss_gb"]
            print()
            for result in results:
                print(row(result))
            print(f"target: our DPO step >= {TARGET_SPEEDUP:.1f}x as fast as MedicalGPT's")
        summary = {
            "pairs": len(lines),
            "medicalgpt_trained_pairs": trained_pairs,
            "max_steps": options.steps,
            "batch": options.batch,
            "max_source_length": source,
            "max_target_length": target,
            "final_checkpoint_in_train_runtime": bool(options.medicalgpt),
            "results": results,
        }
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nJSON: {options.json}")


if __name__ == "__main__":
    main()
