"""DPO step time with and without cached reference log-probs, side by side in one run; asserts nothing.

Three runs on the same pairs: the reference forward on every step (TRL's default), the first run with
--precompute_ref_log_probs (computes and caches them), and a second identical run (reads the cache: no reference
forward at all). TRL 1.16's `padding_free` for DPO is disabled upstream (it falls back to padding), so it is not
measured.

    python benchmarks/dpo_speed.py --model models/SmolLM2-135M-Instruct --pairs 16 --steps 4
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from sft_speed import ROOT, run

SAMPLE = ROOT.parent / "shared" / "reference" / "medicalgpt-data" / "reward" / "dpo_zh_500.jsonl"
PAIRS = SAMPLE if SAMPLE.is_file() else ROOT / "data" / "reward" / "medical_pairs.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--data", default=str(PAIRS), help="Preference pairs (.jsonl)")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", default="outputs/benchmarks/dpo_speed.json")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    (work / "pairs").mkdir()
    lines = Path(options.data).read_text(encoding="utf-8").splitlines()[: options.pairs]
    (work / "pairs" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / "cache")}
    common = ["--model_name_or_path", str(Path(options.model).resolve()), "--train_file_dir", str(work / "pairs")]
    common += ["--template_name", "chatml", "--max_steps", str(options.steps), "--per_device_train_batch_size", "2"]
    common += ["--max_length", "384", "--max_source_length", "192", "--max_target_length", "192"]
    common += ["--torch_dtype", "float32", "--validation_split_percentage", "0", "--save_strategy", "no"]
    common += ["--report_to", "none", "--logging_steps", "1000", "--disable_tqdm", "True"]
    runs = [
        ("reference forward every step", ["--precompute_ref_log_probs", "False"]),
        ("precompute + cache (first run)", ["--precompute_ref_log_probs", "True"]),
        ("cached reference log-probs", ["--precompute_ref_log_probs", "True"]),
    ]
    results = []
    for index, (name, flags) in enumerate(runs):
        out = work / f"run{index}"
        wall, peak, code = run(
            [sys.executable, "dpo_training.py", *common, *flags, "--output_dir", str(out)],
            ROOT,
            env,
            work / f"run{index}.log",
        )
        seconds = json.loads((out / "train_results.json").read_text())["train_runtime"] if code == 0 else float("nan")
        results.append({"run": name, "ok": code == 0, "wall_seconds": wall, "train_seconds": seconds,
                        "seconds_per_step": seconds / options.steps, "peak_rss_gb": peak})  # fmt: skip
        print(f"{name:<34} wall {wall:6.1f} s  train {seconds:6.1f} s  {seconds / options.steps:5.2f} s/step  "
              f"peak RSS {peak:5.2f} GB{'' if code == 0 else '  FAILED'}", flush=True)  # fmt: skip
    Path(options.json).parent.mkdir(parents=True, exist_ok=True)
    Path(options.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {options.json}")


if __name__ == "__main__":
    main()
