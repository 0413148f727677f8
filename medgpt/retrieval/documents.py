"""Reading a knowledge folder: plain text and Markdown, PDF (one unit per page, page numbers kept), Word .docx and
JSON lines (one unit per row, line numbers kept; MedicalGPT's `{"问", "答"}` corpus in a .txt file counts as rows).

A file that cannot be read (encrypted or broken PDF, binary data, over the size limit) becomes a `Problem` naming the
file and the fix; the rest of the folder is still read. Only files inside the given folders are read: hidden names
(the index lives in `.medgpt_index`) and links leading out of the folder are passed over, and nothing is fetched.
"""

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """A stretch of a document that chunks never cross: a page, a row, or a whole text file."""

    text: str
    location: str = ""  # "page 3", "line 12" or "" for a file read whole


@dataclass(frozen=True)
class Problem:
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class Unreadable(Exception):
    """A document this module cannot read; the message says why and what to do."""


def _decoded(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise Unreadable("binary data, not text; convert it to .txt, .md, .pdf or .docx")
    for encoding in ("utf-8-sig", "gb18030"):  # GB18030: older Chinese hospital systems export it
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise Unreadable("not UTF-8 or GB18030 text; save it as UTF-8")


def _row_text(row: dict) -> str:
    """A JSON row as text: each string field on its own line, labelled with its key (问: ..., 答: ...)."""
    lines = []
    for key, value in row.items():
        if isinstance(value, str) and value.strip():
            lines.append(f"{key}: {value.strip()}")
        elif isinstance(value, list):  # conversations / messages
            for turn in value:
                if isinstance(turn, dict):
                    text = turn.get("content", turn.get("value"))
                    if isinstance(text, str) and text.strip():
                        lines.append(text.strip())
    return "\n".join(lines)


def _json_rows(text: str) -> list[Unit] | None:
    """Units of a JSON-lines text (or a JSON list of objects); None when the text is not that."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        whole = json.loads(stripped)
        rows = [(number, row) for number, row in enumerate(whole if isinstance(whole, list) else [whole], 1)]
        where = "row"
    except json.JSONDecodeError:
        rows, where = [], "line"
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError:
                    return None
    if not all(isinstance(row, dict) for _, row in rows):
        return None
    return [Unit(t, f"{where} {number}") for number, row in rows if (t := _row_text(row))]


def read_text(path: Path) -> list[Unit]:
    text = _decoded(path.read_bytes())
    return _json_rows(text) or [Unit(text)]


def read_json(path: Path) -> list[Unit]:
    text = _decoded(path.read_bytes())
    units = _json_rows(text)
    if units is None:
        raise Unreadable("not JSON lines of objects (or a JSON list of objects); fix the file or rename it .txt")
    return units


def read_pdf(path: Path) -> list[Unit]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):  # "" opens PDFs locked only against editing
            raise Unreadable("an encrypted PDF; save an unencrypted copy (print to PDF) into the folder")
        units = [Unit(page.extract_text() or "", f"page {n}") for n, page in enumerate(reader.pages, 1)]
    except (PyPdfError, ValueError, KeyError, OSError) as err:
        raise Unreadable(f"not a readable PDF ({type(err).__name__}: {err}); re-export it") from None
    units = [u for u in units if u.text.strip()]
    if not units:
        raise Unreadable("a PDF without a text layer (a scan?); run OCR on it first")
    return units


def read_docx(path: Path) -> list[Unit]:
    import zipfile

    import docx

    try:
        document = docx.Document(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise Unreadable(f"not a readable .docx ({type(err).__name__}); re-save it from Word") from None
    lines = [p.text for p in document.paragraphs if p.text.strip()]
    for table in document.tables:
        lines.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows)
    return [Unit("\n".join(lines))] if lines else []


READERS: dict[str, Callable[[Path], list[Unit]]] = {
    ".txt": read_text,
    ".md": read_text,
    ".markdown": read_text,
    ".jsonl": read_json,
    ".json": read_json,
    ".pdf": read_pdf,
    ".docx": read_docx,
}


def document_files(roots: list[Path]) -> tuple[list[tuple[Path, str]], list[Problem]]:
    """(file, display name) of every readable kind under the roots, sorted; the display name is relative to its
    root. Files of other kinds and links out of a root are reported as problems, hidden names passed over."""
    found, problems = [], []
    for root in roots:
        if root.is_file():
            found.append((root, root.name))
            continue
        base = root.resolve()
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            if any(part.startswith(".") for part in path.relative_to(root).parts) or path.is_dir():
                continue
            if not path.resolve().is_relative_to(base):
                problems.append(Problem(name, "a link leading out of the folder; copy the file in instead"))
            elif path.suffix.lower() not in READERS:
                problems.append(Problem(name, f"not a document kind read here ({', '.join(READERS)})"))
            else:
                found.append((path, name))
    return found, problems


def read_document(path: Path, max_bytes: int) -> list[Unit]:
    size = path.stat().st_size
    if size > max_bytes:
        raise Unreadable(
            f"{size / 2**20:.0f} MiB, over --max_file_mb {max_bytes / 2**20:.0f}; split it or raise the flag"
        )
    try:
        return READERS[path.suffix.lower()](path)
    except PermissionError:
        raise Unreadable("no permission to read it") from None


def iter_units(files: list[tuple[Path, str]], max_bytes: int) -> Iterator[tuple[str, list[Unit] | Problem]]:
    for path, name in files:
        try:
            yield name, read_document(path, max_bytes)
        except Unreadable as err:
            yield name, Problem(name, str(err))
