"""Find training rows that leak evaluation items (questions or answers, reworded or not); exit 1 if any.

    python tools/check_contamination.py --train_file_dir data/sft --eval_file_dir data/eval
    python tools/check_contamination.py --train_file_dir data/sft --eval_file_dir data/eval --output_dir data-clean/sft

Every leak is listed with both locations and its overlap (the share of the evaluation text's token bigrams found in
the training row). With --output_dir the training files are written there without the leaking rows, same names
and formats. Evaluation files may be any format evaluate_model.py reads (chats, question/answer, multiple choice,
preference pairs, text).
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.atomic import staged_folder
from medgpt.datatools.contamination import EvalIndex, find_leaks
from medgpt.datatools.sources import data_files, file_kind, output_names, read_file, write_like
from medgpt.errors import UserError, run_cli
from medgpt.formats import ReadReport


@dataclass
class ContaminationArguments:
    train_file_dir: str = field(metadata={"help": "Folder (or one file) of training rows."})
    eval_file_dir: str = field(metadata={"help": "Folder (or one file) of evaluation items."})
    output_dir: str | None = field(default=None, metadata={"help": "New folder: the training files without leaks."})
    threshold: float = field(default=0.7, metadata={"help": "Overlap (0-1] at which a row leaks an item."})
    min_tokens: int = field(default=8, metadata={"help": "Skip evaluation texts shorter than this (tokens)."})
    skip_bad_rows: bool = field(default=False, metadata={"help": "Leave out bad rows (counted) instead of stopping."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --output_dir."})


def main(argv: list[str] | None = None) -> int:
    (check_args,) = args.parse((ContaminationArguments,), argv)
    if not 0 < check_args.threshold <= 1:
        raise UserError(f"--threshold {check_args.threshold}: give an overlap in (0, 1], e.g. 0.7.")
    train_files = data_files([check_args.train_file_dir], "--train_file_dir")
    targets = check_args.output_dir and output_names(
        train_files, check_args.train_file_dir, check_args.output_dir, check_args.overwrite
    )
    report = ReadReport()
    eval_files = data_files([check_args.eval_file_dir], "--eval_file_dir")
    items = (row for path in eval_files for row in read_file(path, file_kind(path, None), True, ReadReport()))
    index = EvalIndex(items, check_args.min_tokens)
    rows = (
        row for path in train_files for row in read_file(path, file_kind(path, None), check_args.skip_bad_rows, report)
    )
    kept: dict[Path, list] = {path: [] for path in train_files}
    leaks = 0
    for row, found in find_leaks(index, rows, check_args.threshold):
        for leak in found:
            print(json.dumps(leak.to_json(), ensure_ascii=False))
        leaks += bool(found)
        if not found:
            kept[row.path].append(row.raw)
    if targets:
        with staged_folder(check_args.output_dir) as staging:
            for path, raws in kept.items():
                write_like(staging / targets[path].relative_to(check_args.output_dir), path, raws)
    print(
        f"{report.rows} training rows checked against {len(index.texts)} evaluation texts: {leaks} leaking rows"
        + (f"; the others are in {check_args.output_dir}" if targets else ""),
        file=sys.stderr,
    )
    return int(leaks > 0)


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
