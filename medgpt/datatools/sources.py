"""The rows of data files as the data tools see them: which files, which row kind, and the texts of each row."""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgpt.atomic import writing
from medgpt.data import EXTENSIONS, Kind, file_rows, numbered_rows
from medgpt.errors import UserError
from medgpt.formats import ReadReport

# MedicalGPT's names of its data folders, and ours.
KIND_NAMES: dict[str, Kind] = {
    "sft": "chat",
    "chat": "chat",
    "pt": "text",
    "text": "text",
    "reward": "preference",
    "preference": "preference",
    "grpo": "prompt",
    "prompt": "prompt",
}
SUFFIXES = (".jsonl", ".json", ".txt")


@dataclass
class Row:
    """One good row: where it is, what the file held, and its normalized form (medgpt.formats)."""

    path: Path
    line: int
    raw: Any
    row: dict
    kind: Kind

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def data_files(paths: list[str], flag: str, suffixes: tuple[str, ...] = SUFFIXES) -> list[Path]:
    """Files named, and the data files (by suffix) inside folders named, in a stable order."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{flag} {name}: no such file or folder.")
    if not files:
        raise UserError(f"{flag} {' '.join(paths)} holds no {'/'.join(suffixes)} files.")
    return files


def detect_kind(path: Path) -> Kind:
    """The row kind of a file, from its first row: text lines, preference pairs, chats or prompts."""
    if path.suffix == ".txt":
        return "text"
    for _, row in file_rows(path):
        if not isinstance(row, dict):
            return "text" if isinstance(row, str) else "chat"  # a bad row: the chat reader will name the problem
        if {"chosen", "rejected", "response_chosen", "response_rejected"} & set(row):
            return "preference"
        if {"conversations", "messages", "instruction"} & set(row):
            return "chat"
        return "text" if set(row) == {"text"} else "prompt"
    return "chat"


def file_kind(path: Path, kind: str | None) -> Kind:
    if kind is None:
        return detect_kind(path)
    if kind not in KIND_NAMES:
        raise UserError(f"--kind {kind}: use one of {', '.join(KIND_NAMES)}.")
    resolved = KIND_NAMES[kind]
    if path.suffix not in EXTENSIONS[resolved]:
        raise UserError(f"{path}: a {path.suffix} file cannot hold {kind} rows; use {'/'.join(EXTENSIONS[resolved])}.")
    return resolved


def read_file(path: Path, kind: Kind, skip_bad_rows: bool, report: ReadReport) -> Iterator[Row]:
    for line, raw, row in numbered_rows(str(path), file_rows(path), kind, skip_bad_rows, False, report):
        yield Row(path, line, raw, row, kind)


def parts(row: Row) -> tuple[str, str]:
    """(question, answer) texts of a row: its user turns and its assistant turns (for pairs the chosen answer, for
    prompts the reference; for multiple choice the stem and the text of the correct options, since the letters
    and the distractors are what a leaked copy most often rewrites)."""
    if row.kind == "text":
        return "", row.row["text"]
    if row.kind == "prompt" and row.row["options"]:
        options = json.loads(row.row["options"])
        listing = "\n" + "\n".join(f"{letter}. {text}" for letter, text in options.items())
        question = "\n".join(m["content"] for m in json.loads(row.row["prompt"]) if m["role"] == "user")
        return question.removesuffix(listing), "\n".join(options[letter] for letter in row.row["answer"])
    if row.kind == "chat":
        messages = json.loads(row.row["messages"])
        answer = [m for m in messages if m["role"] == "assistant"]
    else:
        messages = json.loads(row.row["prompt"])
        answer = json.loads(row.row["chosen"]) if row.kind == "preference" else [{"content": row.row["answer"]}]
        answer = answer if isinstance(answer, list) else [answer]
    question = "\n".join(m["content"] for m in messages if m["role"] == "user")
    return question, "\n".join(str(m.get("content") or "") for m in answer)


# One token per CJK character (Chinese has no spaces; characters are its shingles), one per Latin word or number.
TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u9fff\uf900-\ufaff]+")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and spacing are ignored, so reformatting does not hide a copy."""
    return [t.lower() for t in TOKEN.findall(text)]


def ngrams(words: list[str], n: int) -> set[str]:
    """The set of n-token shingles (the whole text as one shingle when it is shorter than n)."""
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def cjk_share(text: str) -> float:
    """Share of CJK characters among the letters of `text` (0 for text without letters)."""
    letters = sum(1 for c in text if c.isalpha())
    return len(CJK.findall(text)) / letters if letters else 0.0


def write_like(path: Path, like: Path, raws: list[Any]) -> None:
    """Write rows as read from `like` into `path`, in the same format: JSON lines, a JSON array, or text lines."""
    with writing(path) as f:
        if like.suffix == ".txt":
            f.writelines(f"{raw}\n" for raw in raws)
        elif like.suffix == ".json" and like.read_text(encoding="utf-8", errors="surrogateescape").lstrip()[:1] == "[":
            json.dump(raws, f, ensure_ascii=False, indent=2)
            f.write("\n")
        else:
            f.writelines(json.dumps(raw, ensure_ascii=False) + "\n" for raw in raws)


def output_names(files: list[Path], root: str, output_dir: str, overwrite: bool) -> dict[Path, Path]:
    """Where each input file goes under `output_dir`: the same name, relative to the input folder `root`.

    The result replaces `output_dir` as a whole (medgpt.atomic.staged_folder), so it must not hold any input and
    an existing non-empty folder is replaced only with --overwrite.
    """
    base = Path(root) if Path(root).is_dir() else Path(root).parent
    out = Path(output_dir).resolve()
    if any(out == f.resolve().parent or out in f.resolve().parents for f in files):
        raise UserError(f"--output_dir {output_dir} holds the input files; give a new folder for the result.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--output_dir {output_dir} exists and is not empty; pass --overwrite True to replace it.")
    return {f: Path(output_dir, f.relative_to(base)) for f in files}
