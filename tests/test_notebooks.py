"""The pipeline notebooks (notebooks/*.ipynb) run top to bottom on the tiny model: each is executed by nbclient in a
kernel on this venv's Python, with a papermill-style cell after the "parameters" cell that shrinks every stage to
two steps on a few rows. The committed notebooks must be clean (no outputs) and valid nbformat 4."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "medgpt-test"
# Stage folders each notebook must leave in OUTPUT, with a file that shows the stage finished.
EXPECTED = {
    "dpo": {
        "outputs-pt": "adapter_model.safetensors",
        "merged-pt": "model.safetensors",
        "outputs-sft": "adapter_model.safetensors",
        "merged-sft": "template_config.json",
        "outputs-dpo": "training_loss.png",
        "merged-dpo": "model.safetensors",
    },
    "ppo": {
        "outputs-pt": "training_loss.png",
        "merged-pt": "model.safetensors",
        "outputs-sft": "training_loss.png",
        "merged-sft": "model.safetensors",
        "outputs-rm": "adapter_model.safetensors",
        "merged-rm": "model.safetensors",
        "outputs-ppo": "training_reward.png",
        "merged-ppo": "model.safetensors",
    },
}


def notebook_path(name: str) -> Path:
    return NOTEBOOKS / f"run_training_{name}_pipeline.ipynb"


def parameters_cell(notebook) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    return tagged[0]


def assigned_names(source: str) -> set[str]:
    return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for target in node.targets}


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec that starts this interpreter (sys.executable), not whatever `python3` Jupyter finds first."""
    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, prefix=str(prefix))
    return KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])


@pytest.mark.parametrize("name", ["dpo", "ppo"])
def test_notebook_is_clean_and_valid(name):
    notebook = nbformat.read(notebook_path(name), as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit the notebook without outputs"
    names = assigned_names(notebook.cells[parameters_cell(notebook)].source)
    assert {"MODEL", "TEMPLATE", "OUTPUT", "MAX_STEPS", "MAX_SAMPLES", "REPO_URL"} <= names


@pytest.mark.parametrize("name", ["dpo", "ppo"])
def test_run_helper_streams_output_and_stops_on_a_failed_stage(name, tmp_path, capsys):
    """The notebooks' `run` helper, executed in process: output (carriage returns kept, for progress bars) is
    printed as it comes, and a stage's non-zero exit raises CalledProcessError, which stops the notebook."""
    notebook = nbformat.read(notebook_path(name), as_version=4)
    (helpers,) = [cell.source for cell in notebook.cells if "def run(" in cell.source]
    namespace = {"MODEL": str(tmp_path), "IN_COLAB": False}
    exec("import os, shlex, subprocess, sys\nfrom pathlib import Path", namespace)
    exec(helpers, namespace)
    script = tmp_path / "stage.py"
    script.write_text("import sys\nprint('step 1', end='\\r')\nprint('step 2')\nsys.exit(int(sys.argv[1]))\n")
    namespace["run"](str(script), 0)
    assert "step 1\rstep 2\n" in capsys.readouterr().out
    with pytest.raises(subprocess.CalledProcessError) as failure:
        namespace["run"](str(script), 3)
    assert failure.value.returncode == 3 and "step 2" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["dpo", "ppo"])
def test_notebook_runs_the_pipeline(name, tiny_model_dir, kernel_specs, tmp_path):
    notebook = nbformat.read(notebook_path(name), as_version=4)
    index = parameters_cell(notebook)
    out = tmp_path / "out"
    params = {
        "MODEL": str(tiny_model_dir),
        "TEMPLATE": "chatml",
        "OUTPUT": str(out),
        "MAX_STEPS": 2,
        "MAX_SAMPLES": 8,
        "MAX_EVAL_SAMPLES": 2,
        "VAL_PERCENT": 20,
        "BATCH_SIZE": 2,
        "BLOCK_SIZE": 64,
        "MAX_LENGTH": 256,
        "LORA_RANK": 4,
        "REPORT_TO": "none",
        "MAX_NEW_TOKENS": 8,
    }
    if name == "ppo":
        params.update(RESPONSE_LENGTH=8, PPO_EPOCHS=1)
    assert set(params) <= assigned_names(notebook.cells[index].source), "inject only parameters the notebook has"
    injected = nbformat.v4.new_code_cell(
        "# Injected by tests/test_notebooks.py\n" + "\n".join(f"{key} = {value!r}" for key, value in params.items()),
        metadata={"tags": ["injected-parameters"]},
    )
    notebook.cells.insert(index + 1, injected)

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MEDGPT_ALLOCATOR": "system",
        "TOKENIZERS_PARALLELISM": "false",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=600,
        startup_timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel starts in notebooks/, as in Jupyter
    )
    client.execute(env=env)  # a failing cell raises CellExecutionError with the cell's traceback

    assert manager.kernel_spec.argv[0] == sys.executable
    for folder, marker in EXPECTED[name].items():
        assert (out / folder / marker).is_file(), f"{folder}/{marker}"
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "the loss curves are shown"
    chat = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    assert chat.count("Assistant:") == 2 and "influenza" in chat, chat
