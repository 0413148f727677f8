"""Writing files and folders so that a reader never sees half of one: everything is written under a temporary name
beside its target and renamed into place (an atomic rename on one file system). Interrupted, a write leaves the old
output or none, never a partial one. Used by every front end that writes results: evaluation JSON, batch answers,
merged models and the stages' final saves."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medgpt.errors import UserError

# What loaders look for first in a model folder: moved in last, removed first.
MARKERS = ("config.json", "adapter_config.json")


@contextlib.contextmanager
def writing(path: str | Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A text file (UTF-8) to write, published at `path` when the block ends without an error. Bytes that were read
    as lone surrogates (errors="surrogateescape") are written back unchanged; newline="" keeps line ends as given."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w",
        dir=out.parent,
        prefix=f".{out.name}.",
        delete=False,
        encoding="utf-8",
        errors="surrogateescape",
        newline=newline,
    )
    try:
        with handle:
            yield handle
        os.replace(handle.name, out)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically, creating its folder."""
    with writing(path) as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A temporary sibling path for a writer that opens files itself (GGUF); renamed to `path` on success."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(descriptor)
    try:
        yield Path(name)
        os.replace(name, out)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(path: str | Path) -> Iterator[Path]:
    """A temporary sibling folder to fill; it replaces `path` (a folder) when the block ends without an error."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, output_dir: Path) -> None:
    """Move a saved model from `staging` into the existing `output_dir` (which may hold checkpoints) so that loaders
    see it complete or not at all: the MARKERS are removed first and moved in last, each move an atomic rename."""
    for name in MARKERS:
        Path(output_dir, name).unlink(missing_ok=True)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name in MARKERS):
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


# Append-only JSON-lines outputs that a rerun continues (generated dialogues, batch answers): every finished record
# is one line carrying an "id", appended, flushed and synced, so a killed run loses only the records in flight.


def finished_ids(path: Path, what: str) -> set[str]:
    """Ids already in `path`; a half-written last line (a killed run) is cut off so that it is written again."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    done = set()
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: not {what}; give a new output file.") from None
    return done


def appended_line(handle: IO[str], record: dict[str, Any]) -> None:
    """Append one record to a file opened for appending, and make it durable before going on."""
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
