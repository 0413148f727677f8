"""Writing files so that a reader never sees half of one: a temporary file in the same folder, renamed over the
target (an atomic rename on POSIX and Windows). Interrupted, it leaves the old file or none, never a partial one."""

import os
import tempfile
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically, creating its folder."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, prefix=f".{out.name}.", delete=False, encoding="utf-8") as f:
        try:
            f.write(text)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, out)
    return out
