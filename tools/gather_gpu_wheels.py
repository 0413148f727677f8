"""Download the pinned wheels benchmarks/gpu_suite.py installs on a GPU machine that has no network (its CUDA torch
stays), for that machine's Python and platform, into an ignored folder carried with the repository.

    python tools/gather_gpu_wheels.py --python_version 3.11 --output_dir .gpu-wheels
    python tools/gather_gpu_wheels.py --list_only True      # what it would carry, from constraints.txt

Versions come from constraints.txt (the lock). Packages are taken in PACKAGES order until --max_mb is reached; what
does not fit is reported, not silently left out (the GPU suite then runs on the machine's own version of it and
says so in its table).
"""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
# What the GPU suite needs beyond the machine's CUDA torch, most needed first; dependencies that every recent
# transformers machine has (numpy, safetensors, huggingface-hub, tokenizers) are not carried.
PACKAGES = ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes")
MANYLINUX = ("manylinux_2_28", "manylinux_2_24", "manylinux_2_17", "manylinux2014")


@dataclass
class WheelArguments:
    output_dir: str = field(default=".gpu-wheels", metadata={"help": "Folder for the wheels (git-ignored)."})
    python_version: str = field(default=f"{sys.version_info.major}.{sys.version_info.minor}", metadata={
        "help": "The GPU machine's Python, e.g. 3.10."})  # fmt: skip
    platform: str = field(default="x86_64", metadata={"help": "The GPU machine's architecture (x86_64, aarch64)."})
    max_mb: float = field(default=60.0, metadata={"help": "Carry at most this many MiB (the device limit is 64)."})
    list_only: bool = field(default=False, metadata={"help": "Print the pinned packages; download nothing."})


def pinned(constraints: Path = ROOT / "constraints.txt") -> dict[str, str]:
    versions = {}
    for line in constraints.read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            versions[name.strip().lower()] = version.strip()
    missing = [name for name in PACKAGES if name not in versions]
    if missing:
        raise UserError(f"{constraints}: no pin for {', '.join(missing)}; add them to the lock first.")
    return {name: versions[name] for name in PACKAGES}


def download(name: str, version: str, wheel_args: WheelArguments, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder)]
    command += ["--python-version", wheel_args.python_version]
    for tag in MANYLINUX:  # pip matches only the platform tags it is given, so list the usual manylinux levels
        command += ["--platform", f"{tag}_{wheel_args.platform}"]
    command += ["--platform", "any", f"{name}=={version}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "pip failed"
        where = f"Python {wheel_args.python_version} on {wheel_args.platform}"
        raise UserError(f"{name}=={version}: no wheel for {where}: {reason}")
    return next(p for p in folder.glob("*.whl") if p.name.lower().startswith(name.replace("-", "_")))


def main(argv: list[str] | None = None) -> dict:
    (wheel_args,) = args.parse((WheelArguments,), argv)
    versions = pinned()
    if wheel_args.list_only:
        report = {"would_carry": [f"{n}=={v}" for n, v in versions.items()], "max_mb": wheel_args.max_mb}
        print(json.dumps(report, indent=2))
        return report
    out = Path(wheel_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    carried, left_out, total = [], [], 0.0
    for name, version in versions.items():
        staging = out / ".download"
        staging.mkdir(exist_ok=True)
        try:
            wheel = download(name, version, wheel_args, staging)
        except UserError as err:
            left_out.append(str(err))
            continue
        size = wheel.stat().st_size / 2**20
        if total + size > wheel_args.max_mb:
            left_out.append(f"{wheel.name} ({size:.1f} MiB): over --max_mb {wheel_args.max_mb}")
            wheel.unlink()
            continue
        wheel.rename(out / wheel.name)
        carried.append(f"{wheel.name} ({size:.1f} MiB)")
        total += size
    (out / ".download").rmdir()
    report = {"carried": carried, "total_mb": round(total, 1), "left_out": left_out, "output_dir": str(out)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_cli(main)
