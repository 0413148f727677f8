"""Convert data files into the formats training reads: ShareGPT JSON lines (default) or OpenAI messages.

    python tools/convert_dataset.py --in_file alpaca.json --out_file sft.jsonl --data_type alpaca
    python tools/convert_dataset.py --in_file qa.csv --out_file sft.jsonl --data_type qa --file_type csv \\
        --question_column 问题 --answer_column 回答 --system_column 系统
    python tools/convert_dataset.py --in_file pairs.jsonl --out_file pairs.jsonl --data_type preference
    python tools/convert_dataset.py --in_file notes/ --out_file pretrain.jsonl --data_type text --text_per_file True

--data_type: alpaca (instruction, input, output, history, system), qa (question and answer columns or keys),
sharegpt, messages (OpenAI), json2jsonl (any chat rows, as MedicalGPT), preference (MedicalGPT, TRL or the older
question/response_chosen/response_rejected pairs) or text (a document per line, or per file). Every row is read by
the same readers as training, so a bad row stops the run with file:line (or, with --skip_bad_rows, is left out and
counted); the output is written only when the whole input has been read.
"""

import json
import sys
from dataclasses import dataclass, field

from medgpt import args
from medgpt.atomic import writing
from medgpt.data import numbered_rows
from medgpt.datatools.convert import DATA_TYPES, FILE_TYPES, Columns, check_choice, render, shaped, source_rows
from medgpt.datatools.sources import data_files
from medgpt.errors import UserError, run_cli
from medgpt.formats import ReadReport


@dataclass
class ConvertArguments:
    in_file: str = field(metadata={"help": "Input file, or a folder of input files."})
    out_file: str = field(metadata={"help": "Output .jsonl file."})
    data_type: str = field(default="alpaca", metadata={"help": f"Input rows: {'|'.join(DATA_TYPES)}."})
    file_type: str | None = field(default=None, metadata={"help": f"{'|'.join(FILE_TYPES)}; default: the suffix."})
    output_format: str = field(default="sharegpt", metadata={"help": "sharegpt (MedicalGPT's) or messages (OpenAI)."})
    question_column: str = field(default="question", metadata={"help": "qa: the question's column or key."})
    answer_column: str = field(default="answer", metadata={"help": "qa: the answer's column or key."})
    system_column: str | None = field(default=None, metadata={"help": "qa: a system prompt column (optional)."})
    history_column: str | None = field(default=None, metadata={"help": 'qa: earlier turns, JSON [["q", "a"], ...].'})
    header: bool = field(
        default=True, metadata={"help": "CSV/TSV: the first line names the columns (else 0, 1, ...)."}
    )
    text_per_file: bool = field(default=False, metadata={"help": "text: one document per .txt file, not per line."})
    skip_bad_rows: bool = field(default=False, metadata={"help": "Leave out bad rows (counted) instead of stopping."})


def main(argv: list[str] | None = None) -> dict:
    (convert_args,) = args.parse((ConvertArguments,), argv)
    check_choice("--data_type", convert_args.data_type, DATA_TYPES)
    check_choice("--output_format", convert_args.output_format, ("sharegpt", "messages"))
    if convert_args.file_type is not None:
        check_choice("--file_type", convert_args.file_type, FILE_TYPES)
    if not convert_args.out_file.endswith(".jsonl"):
        raise UserError(f"--out_file {convert_args.out_file}: the output is JSON lines; name it *.jsonl.")
    kind = DATA_TYPES[convert_args.data_type]
    columns = Columns(
        convert_args.question_column,
        convert_args.answer_column,
        convert_args.system_column,
        convert_args.history_column,
    )
    report = ReadReport()
    converted = []
    for path in data_files([convert_args.in_file], "--in_file", tuple(f".{t}" for t in FILE_TYPES)):
        file_type = convert_args.file_type or path.suffix.lstrip(".")
        if file_type not in FILE_TYPES:
            raise UserError(f"{path}: unknown file type {path.suffix!r}; pass --file_type {'|'.join(FILE_TYPES)}.")
        rows = (
            (number, shaped(row, convert_args.data_type, columns))
            for number, row in source_rows(path, file_type, convert_args.header, convert_args.text_per_file)
        )
        for _, _, row in numbered_rows(str(path), rows, kind, convert_args.skip_bad_rows, False, report):
            converted.append(render(kind, row, convert_args.output_format))
    with writing(convert_args.out_file) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in converted)
    summary = {"rows": len(converted), "skipped": dict(report.skipped), "out_file": convert_args.out_file}
    print(json.dumps(summary, ensure_ascii=False), file=sys.stderr)
    return summary


if __name__ == "__main__":
    run_cli(main)
