"""Training on the CPU with tcmalloc instead of glibc's malloc, where the library is installed.

glibc's malloc keeps the memory of freed tensors: with gradient checkpointing the tensors alive during an SFT step of
SmolLM2-135M (LoRA, 4 x 512 tokens) stay under 0.2 GB, yet the process grew to 3.95 GB; with tcmalloc it peaked at
1.81 GB at the same speed (benchmarks/sft_speed.py; glibc's fixed mmap threshold also reached 1.76 GB but was 48%
slower). An allocator can only be swapped before the process starts, so a training script restarts itself once with
tcmalloc preloaded. MEDGPT_ALLOCATOR=system keeps glibc's malloc.
"""

import glob
import logging
import os
import sys

logger = logging.getLogger(__name__)
LIBRARY_PATTERNS = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def tcmalloc_library() -> str | None:
    return next((path for pattern in LIBRARY_PATTERNS for path in sorted(glob.glob(pattern))), None)


def restart_with_tcmalloc() -> None:
    """Replace this process (same PID, arguments and environment) by itself with tcmalloc preloaded; returns when
    that is not possible or not wanted (no library, not Linux, already done, MEDGPT_ALLOCATOR=system)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get("MEDGPT_ALLOCATOR", "tcmalloc") != "tcmalloc" or "tcmalloc" in preload:
        return
    library = tcmalloc_library() if sys.platform == "linux" else None
    if library is None:
        return
    logger.info("restarting with tcmalloc (%s); MEDGPT_ALLOCATOR=system keeps glibc's malloc", library)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": f"{library} {preload}".strip()})
