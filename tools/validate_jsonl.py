"""Check data files before training: every bad row with file:line:field, then statistics. Exit 1 on any problem.

    python tools/validate_jsonl.py --file_path data/sft
    python tools/validate_jsonl.py --file_path data/reward --kind reward --json
    python tools/validate_jsonl.py --file_path data/sft --model_name_or_path models/SmolLM2-135M-Instruct \\
        --template_name smollm2 --model_max_length 512

Rows are read by the same readers as training, so what passes here trains. --kind (sft|pt|reward|grpo|prompt) is
detected per file when not given. Statistics: rows, turns, share of CJK letters, question and answer lengths
(percentiles; in tokens with --model_name_or_path, else characters), the rows --model_max_length would cut or drop,
empty and duplicate answers, and rows with tool calls. --json prints one JSON report instead of text.
"""

import json
import sys
from dataclasses import dataclass, field

from medgpt import args
from medgpt.args import ChatArguments, ModelArguments
from medgpt.datatools.sources import data_files, file_kind, read_file
from medgpt.datatools.validate import Statistics
from medgpt.errors import UserError, run_cli
from medgpt.formats import ReadReport
from medgpt.model import load_chat_tokenizer


@dataclass
class ValidateArguments:
    file_path: str = field(metadata={"help": "A data file or a folder of .jsonl/.json/.txt files."})
    kind: str | None = field(default=None, metadata={"help": "sft|pt|reward|grpo|prompt; default: per file."})
    model_max_length: int | None = field(default=None, metadata={"help": "Count the rows this length cuts/drops."})
    json: bool = field(default=False, metadata={"help": "Print one JSON report."})


@dataclass
class TokenizerArguments:
    """The tokenizer lengths are counted in (no weights are loaded)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model folder or hub id (tokenizer)."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for hub tokenizers."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    hf_hub_token: str | None = field(default=None, metadata={"help": "Token for private hub models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow tokenizer code from the checkpoint."})

    def model_arguments(self) -> ModelArguments:
        names = ("model_name_or_path", "tokenizer_name_or_path", "cache_dir", "model_revision", "hf_hub_token")
        model_args = ModelArguments(**{name: getattr(self, name) for name in names})
        model_args.trust_remote_code = self.trust_remote_code
        return model_args


def main(argv: list[str] | None = None) -> int:
    validate_args, tokenizer_args, chat_args = args.parse((ValidateArguments, TokenizerArguments, ChatArguments), argv)
    if validate_args.model_max_length is not None and validate_args.model_max_length < 1:
        raise UserError(f"--model_max_length {validate_args.model_max_length}: give a positive number of tokens.")
    tokenizer = template = None
    if tokenizer_args.model_name_or_path or tokenizer_args.tokenizer_name_or_path:
        tokenizer, template = load_chat_tokenizer(tokenizer_args.model_arguments(), chat_args)
        template = template if chat_args.template_name not in (None, "auto") or tokenizer.chat_template else None
    stats = Statistics(tokenizer, template, validate_args.model_max_length)
    report = ReadReport(example_limit=10**9)
    files = data_files([validate_args.file_path], "--file_path")
    for path in files:
        try:
            for row in read_file(path, file_kind(path, validate_args.kind), True, report):
                stats.add(row)
        except UserError as err:  # an empty file; the others are still checked
            report.examples.append(str(err))
    result = {
        "files": [str(p) for p in files],
        "problems": report.examples,
        "skipped_without_answer": report.skipped.get("conversation without any answer", 0),
        **stats.to_json(),
        "empty_answer_rows": stats.empty_answers[:20],
        "duplicate_answer_rows": [{"row": a, "same_as": b} for a, b in stats.duplicate_answers[:20]],
    }
    if validate_args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        for problem in report.examples:
            print(problem)
        print(f"{len(files)} files, {sum(stats.rows.values())} good rows, {len(report.examples)} problems")
        for key, value in result.items():
            if key not in ("files", "problems", "empty_answer_rows", "duplicate_answer_rows"):
                print(f"  {key}: {value}")
    return int(bool(report.examples))


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
