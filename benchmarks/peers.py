"""The toolkits the speed benchmarks run side by side with ours, each with its own Python environment.

- medicalgpt: MedicalGPT's own training scripts, from a checkout given on the command line. Its requirements are met
  by our pins, so its environment is a virtual environment layered over ours (a .pth file puts our site-packages
  after its own): the same library versions, plus what only it imports (loguru, math-verify, latex2sympy2_extended).
- trl: TRL's own trainers run in our environment (TRL is one of our pinned dependencies).
- llamafactory: LLaMA-Factory from the package registry, in a virtual environment of its own, because it pins
  transformers <= 5.6, trl <= 0.24 and peft <= 0.18.1. Only torch is held to our version (the CPU build here); the
  rest resolves to LLaMA-Factory's own pins, and `pip freeze` of it is recorded with the results. It imports
  torchaudio at start-up (for audio inputs) and transformers imports torchvision when present; the registry has
  neither for torch 2.13 (the builds it picks fail to load their compiled operators next to it), so torchvision is
  removed and torchaudio is an empty module: text fine-tuning never calls either.

The environments are created once under --peers_dir (outputs/benchmarks/peers) and reused.

    python benchmarks/peers.py llamafactory     # create (or check) one environment ahead of a benchmark
"""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "outputs" / "benchmarks" / "peers"

# name: (layered over our environment, packages, pins, packages removed after the install, of those the ones left
# as an empty module). A layered environment installs with our constraints file.
ENVIRONMENTS = {
    "medicalgpt": (True, ["loguru==0.7.3", "math-verify==0.5.2", "latex2sympy2_extended==1.0.6"], [], [], []),
    "llamafactory": (False, ["llamafactory==0.9.5"], ["torch==2.13.0"], ["torchaudio", "torchvision"], ["torchaudio"]),
}


def python(name: str, peers_dir: Path = PEERS_DIR) -> str:
    """The Python executable that runs `name`, its environment created on first use."""
    if name not in ENVIRONMENTS:
        return sys.executable
    layered, packages, pins, removed, emptied = ENVIRONMENTS[name]
    folder = peers_dir / name
    executable = folder / "bin" / "python"
    done = folder / ".installed"
    wanted = " ".join(packages + pins + removed + emptied)
    if done.is_file() and done.read_text() == wanted:
        return str(executable)
    print(f"creating the {name} environment in {folder} (once) ...", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    constraints = folder / "constraints.txt"
    site = Path(
        subprocess.check_output([executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .decode()
        .strip()
    )
    if layered:
        (site / "_medgpt_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        constraints.write_text((ROOT / "constraints.txt").read_text())
    else:
        constraints.write_text("\n".join(pins) + "\n")
    install = [executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", constraints]
    subprocess.run([*map(str, install), *packages], check=True)
    if removed:
        subprocess.run([executable, "-m", "pip", "uninstall", "-y", "-q", *removed], check=True)
    for module in emptied:
        (site / module).mkdir()
        (site / module / "__init__.py").write_text('"""Empty: see benchmarks/peers.py."""\n')
    done.write_text(wanted)
    return str(executable)


def freeze(name: str, peers_dir: Path = PEERS_DIR) -> list[str]:
    """The exact packages of a peer's environment (ours for peers that run in it)."""
    command = [python(name, peers_dir), "-m", "pip", "freeze", "--disable-pip-version-check"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()


if __name__ == "__main__":
    for peer in sys.argv[1:]:
        print(peer, python(peer))
