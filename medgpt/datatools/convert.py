"""Rows of other shapes into the formats training reads (tools/convert_dataset.py).

Reading: JSON / JSON lines (medgpt.data.file_rows), CSV / TSV with named columns, and plain text (a document per
line or per file). Each source row is first given one of the shapes the training readers accept (DATA_TYPES), then
read by them (medgpt.data.numbered_rows, so a bad row is reported as file:line exactly as training would), then
written from its normalized form in the chosen output format (RENDER).
"""

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgpt.data import Kind, file_rows
from medgpt.errors import UserError
from medgpt.formats import RowError

# --data_type -> the reader's row kind. MedicalGPT's names first; json2jsonl keeps rows as they are.
DATA_TYPES: dict[str, Kind] = {
    "alpaca": "chat",
    "qa": "chat",
    "sharegpt": "chat",
    "json2jsonl": "chat",
    "messages": "chat",
    "preference": "preference",
    "text": "text",
}
FILE_TYPES = ("json", "jsonl", "csv", "tsv", "txt")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


@dataclass
class Columns:
    """Which CSV/TSV columns (or JSON keys, for --data_type qa) hold each field."""

    question: str = "question"
    answer: str = "answer"
    system: str | None = None
    history: str | None = None


def csv_rows(path: Path, delimiter: str, header: bool) -> Iterator[tuple[int, Any]]:
    """(line, {column: value}); without a header the columns are named 0, 1, 2, ..."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        names: list[str] | None = None
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if header and names is None:
                names = [v.strip() for v in values]
                continue
            keys = names or [str(i) for i in range(len(values))]
            if len(values) != len(keys):
                yield reader.line_num, RowError(None, f"{len(values)} columns, the header has {len(keys)}")
                continue
            yield reader.line_num, dict(zip(keys, values, strict=True))


def source_rows(path: Path, file_type: str, header: bool, per_file: bool) -> Iterator[tuple[int, Any]]:
    if file_type in ("csv", "tsv"):
        yield from csv_rows(path, "," if file_type == "csv" else "\t", header)
    elif file_type == "txt" and per_file:
        yield 1, {"text": path.read_text(encoding="utf-8", errors="surrogateescape").strip()}
    elif file_type == "txt" and path.suffix != ".txt":
        raise UserError(f"{path}: plain text must be a .txt file (one document per line, or --text_per_file True).")
    else:
        yield from file_rows(path)


def _history(value: Any, column: str) -> list:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(column, 'history must be JSON: [["question", "answer"], ...]') from None
    return value


def shaped(row: Any, data_type: str, columns: Columns) -> Any:
    """The row in a shape the training readers accept; they check the rest."""
    if isinstance(row, RowError) or data_type not in ("qa", "alpaca") or not isinstance(row, dict):
        return row
    if data_type == "alpaca":
        return {**row, "history": _history(row.get("history"), "history")} if "history" in row else row
    for name in (columns.question, columns.answer):
        if name not in row:
            keys = ", ".join(map(repr, row)) or "none"
            flag = "--question_column" if name == columns.question else "--answer_column"
            return RowError(name, f"missing (keys: {keys}); name the column with {flag}")
    return {
        "instruction": row[columns.question],
        "output": row[columns.answer],
        "system": row.get(columns.system) if columns.system else None,
        "history": _history(row.get(columns.history), columns.history) if columns.history else [],
    }


def _sharegpt_turns(messages: list[dict]) -> list[dict]:
    turns = []
    for message in messages:
        if message["content"] or not message.get("tool_calls"):
            turns.append({"from": SHAREGPT_FROM[message["role"]], "value": message["content"]})
        for call in message.get("tool_calls", []):
            turns.append({"from": "function_call", "value": json.dumps(call["function"], ensure_ascii=False)})
    return turns


def render(kind: Kind, row: dict, output_format: str) -> dict:
    """A normalized row (medgpt.formats) in the output format: ShareGPT (MedicalGPT's) or OpenAI messages."""
    tools = json.loads(row["tools"]) if row.get("tools") else None
    if kind == "text":
        return {"text": row["text"]}
    if kind == "chat":
        messages = json.loads(row["messages"])
        out = {"conversations": _sharegpt_turns(messages)} if output_format == "sharegpt" else {"messages": messages}
    else:
        prompt, chosen, rejected = (json.loads(row[k]) for k in ("prompt", "chosen", "rejected"))
        if output_format == "sharegpt" and not (chosen.get("tool_calls") or rejected.get("tool_calls")):
            out = {
                "conversations": _sharegpt_turns(prompt),
                "chosen": chosen["content"],
                "rejected": rejected["content"],
            }
        else:
            out = {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}
    return {**out, "tools": tools} if tools else out


def check_choice(flag: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(f"{flag} {value}: use one of {', '.join(choices)}.")
