"""Multiple-choice benchmark files as they are distributed, read into the rows of the `mcq` section.

Users download the benchmarks themselves (we never fetch them) and point `--mcq_file` at a file or a folder; the
layout is told from a file's columns or keys (`--mcq_format` names it instead). LAYOUTS is the table: how a row of
each layout is spotted and how it becomes {"question", "options", "answer", "subject"}, the row the project's
reader takes. Adding a benchmark is adding a row to LAYOUTS.
"""

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgpt.answers import CJK
from medgpt.errors import UserError
from medgpt.formats import LETTERS, RowError

# The medical subjects of the general exams (`--mcq_subjects medical`).
MEDICAL_SUBJECTS = {
    "ceval": ("basic_medicine", "clinical_medicine", "physician"),
    "cmmlu": (
        "anatomy", "clinical_knowledge", "college_medical_statistics", "college_medicine", "genetics", "nutrition",
        "professional_medicine", "traditional_chinese_medicine", "virology",
    ),
}  # fmt: skip
SUFFIXES = (".jsonl", ".json", ".csv")
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


@dataclass(frozen=True)
class Source:
    """Where a raw row comes from, for what the row itself does not say (C-Eval's subject is the file name)."""

    path: Path
    cop_base: int | None  # MedMCQA: whether `cop` counts options from 0 or from 1


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(key, "missing or empty")
    return str(value).strip()


def _letter_columns(row: dict) -> dict[str, str]:
    # C-Eval and CMMLU: one column per option letter; a fifth column left empty is no option
    return {letter: str(row[letter]).strip() for letter in LETTERS[:6] if str(row.get(letter) or "").strip()}


def _answer(row: dict, key: str, hint: str = "") -> str:
    value = str(row.get(key) or "").strip()
    if not value:
        raise RowError(key, f"empty: this row has no answer to score against{hint}")
    return value


def _subject(source: Source, *suffixes: str) -> str:
    stem = source.path.stem
    for suffix in suffixes:
        stem = stem.removesuffix(suffix)
    return stem


def ceval(row: dict, source: Source) -> dict:
    hint = "; C-Eval's test split publishes no answers, score its val split (*_val.csv)"
    return {
        "question": _text(row, "question"),
        "options": _letter_columns(row),
        "answer": _answer(row, "answer", hint),
        "subject": _subject(source, "_val", "_dev", "_test"),
    }


def cmmlu(row: dict, source: Source) -> dict:
    return {
        "question": _text(row, "Question"),
        "options": _letter_columns(row),
        "answer": _answer(row, "Answer"),
        "subject": _subject(source),
    }


def cmb(row: dict, source: Source) -> dict:
    options = row.get("option")
    if not isinstance(options, dict):
        raise RowError("option", 'expected {"A": "option text", ...}')
    return {
        "question": _text(row, "question"),
        "options": {letter: str(text).strip() for letter, text in options.items() if str(text or "").strip()},
        "answer": _answer(row, "answer"),
        "subject": str(row.get("exam_subject") or row.get("exam_class") or row.get("exam_type") or "cmb"),
    }


# "A 文本", "A. text", "A、文本", "A文本": a capital letter, then a mark, a space or a CJK character ("The" is none)
OPTION_LINE = re.compile(rf"^\s*([A-Z])(?:\s*[.．、:：)）]\s*|\s+|(?=[{CJK}]))(.+)$")


def cmexam(row: dict, source: Source) -> dict:
    """CMExam's Options cell holds one option per line: "A 文本" (or "A. 文本", "A、文本")."""
    options: dict[str, str] = {}
    for line in _text(row, "Options").splitlines():
        match = OPTION_LINE.match(line)
        if match and match.group(1) not in options and match.group(2).strip():
            options[match.group(1)] = match.group(2).strip()
        elif line.strip() and options:  # an option text that runs over several lines
            last = next(reversed(options))
            options[last] = f"{options[last]} {line.strip()}"
        elif line.strip():
            raise RowError("Options", f'line {line.strip()!r} does not start with an option letter ("A 文本")')
    return {
        "question": _text(row, "Question"),
        "options": options,
        "answer": _answer(row, "Answer"),
        "subject": str(row.get("Clinical Department") or "cmexam").strip(),
    }


def medqa(row: dict, source: Source) -> dict:
    return {
        "question": _text(row, "question"),
        "options": row.get("options"),
        "answer": _answer(row, "answer_idx"),
        "subject": str(row.get("meta_info") or "medqa"),
    }


def medmcqa(row: dict, source: Source) -> dict:
    """`cop` is 1-4 in MedMCQA's release files and 0-3 in the hub copy (-1 where the test split hides it)."""
    options = {letter: _text(row, key) for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd"), strict=True)}
    cop = row.get("cop")
    if isinstance(cop, str) and cop.strip().lstrip("-").isdigit():
        cop = int(cop)
    if not isinstance(cop, int) or cop < 0:
        raise RowError("cop", f"{cop!r}: no answer to score against (MedMCQA's test split hides its answers)")
    index = cop - (source.cop_base or 0)
    if not 0 <= index < 4:
        raise RowError("cop", f"{cop!r} is out of range for options counted from {source.cop_base} (--mcq_cop_base)")
    return {
        "question": _text(row, "question"),
        "options": options,
        "answer": "ABCD"[index],
        "subject": str(row.get("subject_name") or "medmcqa"),
    }


def pubmedqa(row: dict, source: Source) -> dict:
    """The abstract's contexts, then the question; the options are yes / no / maybe."""
    contexts = row.get("CONTEXTS")
    if contexts is None:  # the hub copy nests them
        contexts = (row.get("context") or {}).get("contexts") if isinstance(row.get("context"), dict) else None
    question = _text(row, "QUESTION" if "QUESTION" in row else "question")
    decision = _answer(row, "final_decision").lower()
    letter = next((k for k, v in PUBMEDQA_OPTIONS.items() if v == decision), None)
    if letter is None:
        raise RowError("final_decision", f"{decision!r} is not one of yes, no, maybe")
    context = "\n".join(str(c).strip() for c in contexts or [])
    return {
        "question": f"{context}\n{question}" if context else question,
        "options": dict(PUBMEDQA_OPTIONS),
        "answer": letter,
        "subject": "pubmedqa",
    }


def project(row: dict, source: Source) -> dict:
    return row  # the project's own {"question", "options", "answer"} rows (check_mcq_row validates them)


@dataclass(frozen=True)
class Layout:
    name: str
    keys: frozenset[str]  # a row with all of these keys (a CSV with these columns) is of this layout
    convert: Callable[[dict, Source], dict]


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("cmb", frozenset({"question", "option", "answer", "question_type"}), cmb),
        Layout("medmcqa", frozenset({"question", "opa", "opb", "opc", "opd", "cop"}), medmcqa),
        Layout("pubmedqa", frozenset({"final_decision"}), pubmedqa),
        Layout("cmexam", frozenset({"Question", "Options", "Answer"}), cmexam),
        Layout("ceval", frozenset({"question", "A", "B", "answer"}), ceval),
        Layout("cmmlu", frozenset({"Question", "A", "B", "Answer"}), cmmlu),
        Layout("medqa", frozenset({"question", "options", "answer_idx"}), medqa),
        Layout("project", frozenset({"options"}), project),
    )
}
FORMATS = ("auto", *LAYOUTS)


def raw_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, raw row) of a .csv (header row), .jsonl, or .json file (a list of rows, or PubMedQA's
    object of rows keyed by PMID)."""
    if path.suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            line = 1
            try:
                for row in reader:
                    yield line + 1, {str(k).strip(): v for k, v in row.items() if k is not None}
                    line = reader.line_num
            except csv.Error as err:
                raise UserError(f"{path}:{reader.line_num}: not a readable CSV row ({err}).") from None
        return
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    if path.suffix == ".json" and text.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            if text.lstrip().startswith("{") and err.msg == "Extra data":  # JSON lines in a .json file
                value = None
            else:
                raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno}).") from None
        if isinstance(value, list):
            yield from enumerate(value, 1)
            return
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for number, (key, row) in enumerate(value.items(), 1):
                yield number, {"id": key, **row}
            return
        if isinstance(value, dict):
            yield 1, value
            return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, RowError(None, f"invalid JSON ({err.msg}, column {err.colno})")


def detect(path: Path, rows: list[tuple[int, Any]], flag: str) -> Layout:
    """The layout of a file, from the keys of its first row."""
    first = next((row for _, row in rows if isinstance(row, dict)), None)
    if first is None:
        raise UserError(f"--{flag} {path}: no rows to read (an empty file, or no JSON objects or CSV rows).")
    keys = set(first)
    for layout in LAYOUTS.values():
        if layout.keys <= keys:
            return layout
    raise UserError(
        f"--{flag} {path}: cannot tell the layout from its columns or keys ({', '.join(sorted(keys)[:12])}); "
        f"give --mcq_format (one of {', '.join(LAYOUTS)}) or use the project's "
        '{"question", "options", "answer"} rows.'
    )


def cop_base(path: Path, rows: list[tuple[int, Any]], given: int | None, flag: str) -> int | None:
    """MedMCQA's `cop` counts from 1 in the release files and from 0 in the hub copy: a 0 or a 4 among the values
    tells which; a file with only 1-3 needs --mcq_cop_base."""
    if given is not None:
        return given
    values = {str(row.get("cop")).strip() for _, row in rows if isinstance(row, dict)}
    if "0" in values and "4" in values:
        raise UserError(f"--{flag} {path}: `cop` takes both 0 and 4, so it is neither 0-3 nor 1-4; check the file.")
    if "0" in values:
        return 0
    if "4" in values:
        return 1
    raise UserError(
        f"--{flag} {path}: every `cop` is 1, 2 or 3, so the file does not show whether options count from 0 (the "
        "hub copy) or from 1 (the release files); give --mcq_cop_base 0 or 1."
    )


def converted_rows(path: Path, layout_name: str, given_cop_base: int | None, flag: str) -> tuple[str, list]:
    """(layout name, [(line, row in the project's layout, or a RowError)]) of one file."""
    rows = list(raw_rows(path))
    layout = detect(path, rows, flag) if layout_name == "auto" else LAYOUTS[layout_name]
    source = Source(path, cop_base(path, rows, given_cop_base, flag) if layout.name == "medmcqa" else None)
    converted = []
    for number, row in rows:
        if isinstance(row, dict):
            try:
                row = {**layout.convert(row, source), "benchmark": layout.name}
            except RowError as err:
                row = err
        converted.append((number, row))
    return layout.name, converted


def wanted_subjects(value: str | None, layouts: set[str]) -> set[str] | None:
    """--mcq_subjects: a comma-separated list of subjects, `medical` for the medical subjects of C-Eval and CMMLU."""
    if not value:
        return None
    names: set[str] = set()
    for name in (part.strip() for part in value.split(",")):
        if name == "medical":
            for layout in layouts & set(MEDICAL_SUBJECTS) or set(MEDICAL_SUBJECTS):
                names.update(MEDICAL_SUBJECTS[layout])
        elif name:
            names.add(name)
    return names


def benchmark_files(path: str, flag: str) -> list[Path]:
    location = Path(path)
    if location.is_file():
        return [location]
    if not location.is_dir():
        raise UserError(f"--{flag} {path}: no such file or folder; point it at a benchmark file or a folder of them.")
    files = sorted(p for p in location.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise UserError(f"--{flag} {path} holds no {'/'.join(SUFFIXES)} files.")
    return files
