"""Data tools on a large file: validation, PHI scan, deduplication and the contamination check. Prints figures;
asserts nothing.

    python benchmarks/data_tools.py --rows 100000
    python benchmarks/data_tools.py --rows 20000 --tools validate,dedup

Synthetic ShareGPT rows (English and Chinese, 1-3 turns, about 300 characters each) are written to a temporary
folder first: 5% are exact copies of an earlier row, 5% near copies (one word changed) and 1% hold a phone number,
so every tool has work to do. Each tool runs once as a user would run it (its script, start-up included).
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"

WORDS = (
    "patient fever cough pain chest blood pressure glucose insulin dose tablet daily week test scan heart lung "
    "kidney liver infection antibiotic rest fluids doctor nurse clinic urgent symptoms history allergy asthma "
    "diabetes hypertension headache dizziness nausea rash swelling fracture sleep diet exercise smoking"
).split()
HANZI = (
    "患者发热咳嗽胸痛血压血糖胰岛素剂量每日检查心肺肾肝感染"
    "抗生素休息饮水医生护士门诊紧急症状过敏哮喘糖尿病高血压头痛头晕恶心皮疹"
)


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return " ".join(rng.choices(WORDS, k=rng.randint(8, 30))) + "."
    return "".join(rng.choices(HANZI, k=rng.randint(15, 60))) + "。"


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    written: list[dict] = []
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            roll = rng.random()
            if written and roll < 0.05:
                row = rng.choice(written)
            elif written and roll < 0.10:
                row = json.loads(json.dumps(rng.choice(written)))
                row["conversations"][-1]["value"] += f" {rng.choice(WORDS)}"
            else:
                turns = []
                for _ in range(rng.randint(1, 3)):
                    turns.append({"from": "human", "value": sentence(rng)})
                    turns.append({"from": "gpt", "value": " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))})
                if roll > 0.99:
                    turns[0]["value"] += f" 我的手机是139{rng.randint(10**7, 10**8 - 1)}。"
                row = {"conversations": turns}
                if len(written) < 50_000:
                    written.append(row)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def timed(name: str, script: str, flags: list[str], rows: int) -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(TOOLS / script), *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    last = (done.stderr.strip().splitlines() or [""])[-1][:90]
    if name == "dedup" and done.returncode == 0:
        last = f"dropped {json.loads(done.stdout)['dropped']}"
    if name == "validate":
        last = next((line for line in done.stdout.splitlines() if "good rows" in line), last)
    print(f"{name:<14} {seconds:8.1f} s  {rows / seconds:10.0f} rows/s  exit {done.returncode}: {last}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tools", default="validate,scan_phi,dedup,contamination")
    options = parser.parse_args(argv)
    chosen = options.tools.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train").mkdir()
        start = time.perf_counter()
        write_rows(root / "train" / "train.jsonl", options.rows)
        size = (root / "train" / "train.jsonl").stat().st_size / 2**20
        print(f"{options.rows} rows, {size:.0f} MiB written in {time.perf_counter() - start:.1f} s")
        (root / "eval").mkdir()
        write_rows(root / "eval" / "eval.jsonl", 1000, seed=1)
        train = str(root / "train")
        runs = {
            "validate": ("validate_jsonl.py", ["--file_path", train]),
            "scan_phi": ("scan_phi.py", ["--file_path", train]),
            "dedup": ("dedup.py", ["--train_file_dir", train, "--output_dir", str(root / "dedup")]),
            "contamination": (
                "check_contamination.py",
                ["--train_file_dir", train, "--eval_file_dir", str(root / "eval")],
            ),
        }
        unknown = set(chosen) - set(runs)
        if unknown:
            parser.error(f"--tools {options.tools}: unknown {', '.join(sorted(unknown))}; use {', '.join(runs)}")
        for name in chosen:
            timed(name, *runs[name], options.rows)


if __name__ == "__main__":
    main()
