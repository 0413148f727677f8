"""Data pipeline throughput: read + validate, tokenize with masks, pack. Prints figures; asserts nothing.

    python benchmarks/data_pipeline.py --tokenizer models/SmolLM2-135M-Instruct --rows 20000 --num_proc 2

Synthetic ShareGPT rows (1-3 turns, English and Chinese) are written to a temporary folder first. Each stage runs
on a fresh datasets cache, so the figures are cold-cache numbers.
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from medgpt.args import DataArguments
from medgpt.chat import get_template
from medgpt.data import load_datasets
from medgpt.tokenization import pack, tokenize_sft

SENTENCES = [
    "The patient reports a fever of 38.5°C and a dry cough for three days.",
    "Blood pressure is 142/91 mmHg; we recommend less salt and regular exercise.",
    "患者发热三天，伴有咳嗽和乏力，建议多休息、多喝水。",
    "Metformin 500 mg twice daily is a common first treatment for type 2 diabetes.",
    "如果胸痛持续不缓解，请立即就医。",
]


def write_rows(folder: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.jsonl").open("w", encoding="utf-8") as f:
        for _ in range(rows):
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns.append({"from": "human", "value": " ".join(rng.choices(SENTENCES, k=rng.randint(1, 3)))})
                turns.append({"from": "gpt", "value": " ".join(rng.choices(SENTENCES, k=rng.randint(1, 6)))})
            f.write(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="A model folder with a tokenizer.")
    parser.add_argument("--template_name", default="chatml")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--num_proc", type=int, default=None)
    parser.add_argument("--max_length", type=int, default=1024)
    options = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)
    template = get_template(options.template_name)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_rows(Path(tmp) / "data", options.rows)
        size_mb = (data_dir / "train.jsonl").stat().st_size / 2**20
        start = time.perf_counter()
        rows = load_datasets(
            DataArguments(train_file_dir=str(data_dir), validation_split_percentage=0),
            "chat",
            cache_dir=str(Path(tmp) / "cache"),
        )["train"]
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        tokenized = tokenize_sft(rows, tokenizer, template, options.max_length, num_proc=options.num_proc)
        tokenize_s = time.perf_counter() - start
        tokens = sum(len(ids) for ids in tokenized["input_ids"])
        supervised = sum(sum(label != -100 for label in labels) for labels in tokenized["labels"])

        start = time.perf_counter()
        packed = pack(tokenized, options.max_length)
        pack_s = time.perf_counter() - start

    print(
        f"rows: {options.rows} ({size_mb:.1f} MB of JSONL), tokenizer {options.tokenizer}, "
        f"num_proc {options.num_proc or 1}"
    )
    print(f"read + validate : {read_s:7.2f} s  {options.rows / read_s:10.0f} rows/s")
    print(
        f"tokenize + mask : {tokenize_s:7.2f} s  {tokens / tokenize_s:10.0f} tokens/s  "
        f"({tokens} tokens, {100 * supervised / tokens:.0f}% supervised)"
    )
    print(
        f"pack            : {pack_s:7.2f} s  {len(tokenized)} samples -> {len(packed)} rows of <= "
        f"{options.max_length} tokens, {100 * tokens / (len(packed) * options.max_length):.1f}% filled "
        f"(unpacked batches of 8 would pad to {padding_waste(tokenized):.1f}% filled)"
    )


def padding_waste(tokenized) -> float:
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    batches = [lengths[i : i + 8] for i in range(0, len(lengths), 8)]
    return 100 * sum(lengths) / sum(max(b) * len(b) for b in batches)


if __name__ == "__main__":
    main()
