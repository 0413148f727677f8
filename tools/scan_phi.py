"""Find patient identifiers in data files (Chinese and English); exit 1 if any. Optionally write redacted copies.

    python tools/scan_phi.py --file_path data/sft
    python tools/scan_phi.py --file_path notes.jsonl --redact_dir redacted --patterns hospital_patterns.yaml

Categories: resident ID numbers (checksum verified), mobile and landline numbers, e-mail addresses, dates of birth,
medical record / admission numbers, bank card numbers (Luhn), and addresses and names where a marker introduces
them (姓名：, 患者张某, Patient: ...). Each finding is printed as JSON: file, line, category and the matched text.
With --redact_dir every file is copied there under the same name with each identifier replaced by a typed
placeholder ([PHONE], [ID], ...); every other byte is unchanged. --patterns adds rows to the pattern table
(medgpt/datatools/phi.py, PATTERNS): a YAML or JSON list of {category, pattern, placeholder?, check?}.
"""

import json
import re
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

from medgpt import args
from medgpt.atomic import staged_folder, writing
from medgpt.datatools.phi import finding_json, load_patterns, redact, scan_lines
from medgpt.datatools.sources import data_files, output_names
from medgpt.errors import run_cli

ESCAPED = re.compile(r"\\u[0-9a-fA-F]{4}")


@dataclass
class ScanArguments:
    file_path: str = field(metadata={"help": "A data file or a folder of .jsonl/.json/.txt files."})
    redact_dir: str | None = field(default=None, metadata={"help": "New folder for redacted copies, same names."})
    patterns: str | None = field(default=None, metadata={"help": "YAML/JSON file of extra patterns."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --redact_dir."})


def main(argv: list[str] | None = None) -> int:
    (scan_args,) = args.parse((ScanArguments,), argv)
    patterns = load_patterns(scan_args.patterns)
    files = data_files([scan_args.file_path], "--file_path")
    targets = scan_args.redact_dir and output_names(
        files, scan_args.file_path, scan_args.redact_dir, scan_args.overwrite
    )
    counts: Counter = Counter()
    with staged_folder(scan_args.redact_dir) if targets else nullcontext() as staging:
        for path in files:
            escaped = 0
            target = targets and staging / targets[path].relative_to(scan_args.redact_dir)
            with writing(target, newline="") if target else nullcontext() as redacted:
                for number, line, findings in scan_lines(path, patterns):
                    escaped += bool(ESCAPED.search(line))
                    for finding in findings:
                        counts[finding.category] += 1
                        print(json.dumps(finding_json(path, number, finding), ensure_ascii=False))
                    if redacted is not None:
                        redacted.write(redact(line, findings))
            if escaped:
                print(
                    f"warning: {path}: {escaped} lines hold \\u-escaped text, which is scanned as written: Chinese "
                    "markers there are missed. Save the file with ensure_ascii=False.",
                    file=sys.stderr,
                )
    total = sum(counts.values())
    summary = ", ".join(f"{n} {category}" for category, n in counts.most_common()) or "none"
    print(f"{len(files)} files scanned: {total} identifiers found ({summary})", file=sys.stderr)
    if targets:
        print(f"redacted copies in {scan_args.redact_dir}", file=sys.stderr)
    return int(total > 0)


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
