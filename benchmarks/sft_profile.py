"""Where the time of an SFT step goes on this machine: the real SFT path (supervised_finetuning.main, in this
process) under torch.profiler for a few optimizer steps, its operators' own CPU time summed by kind. Prints a table
and writes JSON; asserts nothing.

Kinds: the frozen base's and LoRA's matrix products, attention, LoRA dropout (drawing the random masks), the chunked
loss's head products and softmax, optimizer steps, and the element-wise rest (norms, rotary embedding, activations,
copies). The backward pass and the recompute of checkpointed layers are in the same kinds as the forward.

    python benchmarks/sft_profile.py --model models/SmolLM2-135M-Instruct --rows 16
    python benchmarks/sft_profile.py --flags --lora_dropout 0      # any supervised_finetuning.py flags after --flags
"""

import argparse
import collections
import json
import os
import runpy
import sys
from pathlib import Path

from scratch import KEEP_HELP, scratch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "reference" / "medicalgpt-data" / "sft" / "medical_sft_1K_format.jsonl"
# (kind, substrings of the operator names that belong to it), first match wins.
KINDS = [
    ("dropout (random masks)", ["bernoulli", "dropout"]),
    ("attention", ["scaled_dot_product", "flash_attention", "_efficient_attention"]),
    ("optimizer", ["adam", "Optimizer"]),
    ("loss (softmax, gather)", ["log_softmax", "logsumexp", "nll_loss", "cross_entropy", "gather"]),
    ("matrix products", ["aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"]),
    ("element-wise, norms, copies", ["aten::"]),
]


def kind_of(name: str) -> str:
    return next((kind for kind, parts in KINDS if any(part in name for part in parts)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--data", default=str(SAMPLE if SAMPLE.is_file() else ROOT / "data/sft"))
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--json", default="outputs/benchmarks/sft_profile.json")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="More supervised_finetuning.py flags")
    parser.add_argument("--keep_work", action="store_true", help=KEEP_HELP)
    options = parser.parse_args()
    os.environ.setdefault("MEDGPT_ALLOCATOR", "system")  # profile in this process: no restart with tcmalloc

    import torch
    from torch.profiler import ProfilerActivity, profile

    with scratch("sft-profile-", keep=options.keep_work) as work:
        (work / "data").mkdir()
        rows = Path(options.data).read_text(encoding="utf-8").splitlines()[: options.rows]
        (work / "data" / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        argv = ["--model_name_or_path", str(Path(options.model).resolve()), "--train_file_dir", str(work / "data")]
        argv += ["--template_name", "chatml", "--model_max_length", "512", "--per_device_train_batch_size", "4"]
        argv += ["--use_peft", "True", "--target_modules", "all", "--lora_rank", "8", "--lora_alpha", "16"]
        argv += ["--torch_dtype", "float32", "--validation_split_percentage", "0", "--save_strategy", "no"]
        argv += ["--report_to", "none", "--disable_tqdm", "True", "--output_dir", str(work / "out"), *options.flags]
        sys.argv = ["supervised_finetuning.py", *argv]
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            try:  # the script as a user runs it, in this process
                runpy.run_path(str(ROOT / "supervised_finetuning.py"), run_name="__main__")
            except SystemExit as done:
                if done.code:
                    raise
        seconds: collections.Counter = collections.Counter()
        for event in profiler.key_averages():
            seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6
        total = sum(seconds.values())
        print(f"{'kind':<32} {'self CPU s':>10} {'share':>7}   ({torch.get_num_threads()} threads)")
        for kind, value in seconds.most_common():
            print(f"{kind:<32} {value:10.1f} {value / total:7.1%}")
        top = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
        print("\nslowest operators: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e6:.1f} s" for e in top))
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps({"seconds": dict(seconds), "argv": argv}, indent=2) + "\n")


if __name__ == "__main__":
    main()
