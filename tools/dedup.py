"""Drop exact and near-duplicate rows within and across data files; the kept rows keep their file names and format.

    python tools/dedup.py --train_file_dir data/sft --output_dir data-dedup/sft
    python tools/dedup.py --train_file_dir data/pretrain --output_dir data-dedup/pretrain --threshold 0.9

Near duplicates: estimated Jaccard similarity of token 3-grams (a CJK character or a Latin word per token) at or
above --threshold. The first occurrence (files in name order) is kept. What was dropped, and which row it
duplicates, goes to OUTPUT_DIR.dedup_report.jsonl beside the output folder, so the folder holds training data only.
"""

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.atomic import staged_folder, writing
from medgpt.datatools.dedup import find_duplicates
from medgpt.datatools.sources import data_files, file_kind, output_names, read_file, write_like
from medgpt.errors import UserError, run_cli
from medgpt.formats import ReadReport


@dataclass
class DedupArguments:
    train_file_dir: str = field(metadata={"help": "Folder (or one file) of training rows: any kind training reads."})
    output_dir: str = field(metadata={"help": "New folder for the kept rows: same file names and formats."})
    threshold: float = field(default=0.7, metadata={"help": "Near-duplicate similarity (0-1]; 1 keeps near ones."})
    kind: str | None = field(default=None, metadata={"help": "sft|pt|reward|grpo|prompt; default: per file."})
    skip_bad_rows: bool = field(default=False, metadata={"help": "Leave out bad rows (counted) instead of stopping."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --output_dir."})


def main(argv: list[str] | None = None) -> dict:
    (dedup_args,) = args.parse((DedupArguments,), argv)
    if not 0 < dedup_args.threshold <= 1:
        raise UserError(f"--threshold {dedup_args.threshold}: give a similarity in (0, 1], e.g. 0.7.")
    files = data_files([dedup_args.train_file_dir], "--train_file_dir")
    targets = output_names(files, dedup_args.train_file_dir, dedup_args.output_dir, dedup_args.overwrite)
    report = ReadReport()
    rows = (
        row
        for path in files
        for row in read_file(path, file_kind(path, dedup_args.kind), dedup_args.skip_bad_rows, report)
    )
    kept: dict[Path, list] = {path: [] for path in files}
    dropped = []
    for row, duplicate in find_duplicates(rows, dedup_args.threshold):
        if duplicate is None:
            kept[row.path].append(row.raw)
        else:
            dropped.append(duplicate.to_json())
    with staged_folder(dedup_args.output_dir) as staging:
        for path, raws in kept.items():
            write_like(staging / targets[path].relative_to(dedup_args.output_dir), path, raws)
    report_file = Path(f"{Path(dedup_args.output_dir)}.dedup_report.jsonl")
    with writing(report_file) as f:
        f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in dropped)
    summary = {
        "rows": report.rows,
        "kept": report.rows - len(dropped),
        "dropped": dict(Counter(line["duplicate"] for line in dropped)),
        "bad_rows_skipped": sum(report.skipped.values()),
        "output_dir": dedup_args.output_dir,
        "report": str(report_file),
    }
    print(json.dumps(summary, ensure_ascii=False, indent=2), file=sys.stdout)
    return summary


if __name__ == "__main__":
    run_cli(main)
