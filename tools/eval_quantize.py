"""Compare a model and its quantized copies on the same held-out files: chat perplexity, multiple-choice accuracy
(evaluate_model.py's sections), size on disk, peak memory while loading and answering, and generation speed.

    python tools/eval_quantize.py --bnb_path merged-sft-nf4 --data_path data/eval/sft
    python tools/eval_quantize.py --base_model merged-sft --bnb_path merged-sft-nf4 merged-sft-int8 \\
        --data_path data/eval/sft --mcq_file data/eval/mcq --max_samples 50 --output_file quant.json

Each model runs in a fresh process, one after the other, so its peak memory is its own (GPU memory allocated on a
GPU; on a CPU the resident set size, which includes Python and torch, about the same for every row). Speed is
greedy answers to the first --num_prompts questions of --data_path, new tokens per second. --base_model is the
unquantized original (its row comes first); without it only the quantized models are measured.
"""

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.atomic import write_text
from medgpt.datatools.sources import data_files, file_kind, parts, read_file
from medgpt.errors import UserError, run_cli
from medgpt.export.quantize import Workload, measure
from medgpt.formats import ReadReport

COLUMNS = ("size_mb", "peak_memory_mb", "perplexity", "mcq_accuracy", "tokens_per_second")


@dataclass
class EvalQuantArguments:
    bnb_path: list[str] = field(metadata={"help": "Quantized model folder(s) (tools/model_quant.py output)."})
    data_path: str = field(metadata={"help": "Held-out chats (file or folder): perplexity and the speed prompts."})
    base_model: str | None = field(default=None, metadata={"help": "The unquantized model, measured first."})
    mcq_file: str | None = field(default=None, metadata={"help": "Multiple-choice questions (file or folder)."})
    max_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows of each file."})
    batch_size: int = field(default=4, metadata={"help": "Sequences per forward pass."})
    num_prompts: int = field(default=4, metadata={"help": "Questions answered for the speed figure."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens per answer for the speed figure."})
    template_name: str | None = field(default=None, metadata={"help": "Chat template; default: the trained one."})
    output_file: str | None = field(default=None, metadata={"help": "Write the figures (and answers) as JSON."})


def questions(path: str, count: int) -> tuple[str, ...]:
    found = []
    for file in data_files([path], "--data_path"):
        for row in read_file(file, file_kind(file, None), True, ReadReport()):
            question = parts(row)[0].strip()
            if question:
                found.append(question)
            if len(found) == count:
                return tuple(found)
    if not found:
        raise UserError(f"--data_path {path} holds no question to answer for the speed figure.")
    return tuple(found)


def table(rows: list[dict]) -> str:
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += ["| " + " | ".join([row["model"], *(str(row[c]) for c in COLUMNS)]) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    (quant_args,) = args.parse((EvalQuantArguments,), argv)
    models = ([quant_args.base_model] if quant_args.base_model else []) + list(quant_args.bnb_path)
    for flag, path in [("--base_model", quant_args.base_model)] + [("--bnb_path", p) for p in quant_args.bnb_path]:
        if path and not Path(path, "config.json").is_file():
            raise UserError(f"{flag} {path}: no config.json; point it at a saved model folder.")
    workload = Workload(
        quant_args.data_path,
        quant_args.mcq_file,
        quant_args.max_samples,
        quant_args.batch_size,
        questions(quant_args.data_path, quant_args.num_prompts),
        quant_args.max_new_tokens,
        quant_args.template_name,
    )
    rows = []
    for model in models:  # a fresh interpreter per model: its peak memory is its own
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(measure, model, workload).result())
    print(table(rows))
    if quant_args.output_file:
        write_text(quant_args.output_file, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        print(f"wrote {quant_args.output_file}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    run_cli(main)
