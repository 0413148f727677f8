"""The benchmarks' scratch folder: the sides' data, outputs and logs while they run. On the way out, even after an
error or Ctrl-C, the logs are copied into a folder beside the JSON report (`<report>-logs/`, replacing the last run's)
and the rest is removed, so that repeated runs do not fill the disk with models and checkpoints; --keep_work keeps it.

    with scratch("rl-bench-", report="outputs/benchmarks/rl_speed.json", keep=options.keep_work) as work:
        ...
"""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

KEEP_HELP = "Keep the scratch folder (data, model outputs, checkpoints) instead of removing it at the end"


def logs_folder(report: str | Path) -> Path:
    """Where a run's logs are kept: beside its JSON report, outputs/benchmarks/rl_speed.json -> rl_speed-logs/."""
    report = Path(report)
    return report.with_name(f"{report.stem}-logs")


@contextlib.contextmanager
def scratch(prefix: str, report: str | Path | None = None, keep: bool = False) -> Iterator[Path]:
    """A new temporary folder named prefix...; on exit its *.log files go to logs_folder(report) (with a report) and
    the folder is removed unless `keep`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        logs = sorted(work.rglob("*.log"))
        if report is not None and logs:
            kept = logs_folder(report)
            shutil.rmtree(kept, ignore_errors=True)
            kept.mkdir(parents=True)
            for log in logs:
                shutil.copy2(log, kept / "_".join(log.relative_to(work).parts))
            print(f"logs: {kept}", flush=True)
        if keep:
            print(f"work folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
