"""Reading an evaluation file or folder with the project's readers, so that a bad row is reported as file:line."""

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medgpt import data
from medgpt.errors import UserError
from medgpt.formats import ReadReport, RowError

logger = logging.getLogger(__name__)


def _checked(rows: Iterator[tuple[int, Any]], check: Callable[[Any], Any] | None) -> Iterator[tuple[int, Any]]:
    for number, row in rows:
        if check is not None and not isinstance(row, RowError):
            try:
                row = check(row)
            except RowError as err:
                row = err  # the reader reports it as file:line (or skips it with --skip_bad_rows)
        yield number, row


def read_rows(
    path: str,
    kind: data.Kind,
    flag: str,
    skip_bad_rows: bool = False,
    limit: int | None = None,
    check: Callable[[Any], Any] | None = None,
) -> list[dict]:
    """Normalized rows of a file, or of every .jsonl/.json file in a folder, read and validated by medgpt.data.
    `check` may reject a raw row with a RowError (reported as file:line) before it is normalized."""
    location = Path(path)
    if location.is_dir():
        files = data.find_files(path, kind, flag)
    elif location.is_file():
        files = [location]
    else:
        raise UserError(f"--{flag} {path}: no such file or folder; point it at a .jsonl/.json file or a folder.")
    sources = [(str(file), data.file_rows(file)) for file in files]
    return read_sources(sources, kind, flag, path, skip_bad_rows, limit, check)


def read_sources(
    sources: list[tuple[str, Iterator[tuple[int, Any]]]],
    kind: data.Kind,
    flag: str,
    path: str,
    skip_bad_rows: bool = False,
    limit: int | None = None,
    check: Callable[[Any], Any] | None = None,
) -> list[dict]:
    """Normalized rows of (file name, (line, raw row)) sources read from --`flag` `path` (named in messages)."""
    report = ReadReport()
    checked = [(name, _checked(rows, check)) for name, rows in sources]
    rows = list(data.read_rows(checked, kind, skip_bad_rows, True, report))  # every row is checked, even past limit
    report.log(f"--{flag}")
    if not rows:
        raise UserError(f"--{flag} {path}: no usable rows (every row was skipped); see the summary above.")
    if limit is not None and limit < len(rows):
        logger.info("--%s: using the first %d of %d rows (--max_samples)", flag, limit, len(rows))
        rows = rows[:limit]
    return rows
