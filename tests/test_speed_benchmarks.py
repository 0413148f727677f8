"""The speed benchmarks' own arithmetic and conversions (their figures come from runs too long for the suite):
medians over rotated repeats, ratios against peers, TRL's view of a ShareGPT row, LLaMA-Factory's YAML file."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    """A benchmark script as a module (benchmarks are scripts, not a package; they import each other by name)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sft_speed():
    load("peers")
    load("scratch")
    return load("sft_speed")


def test_scratch_keeps_the_logs_beside_the_report_and_removes_the_rest(tmp_path, capsys):
    scratch = load("scratch")
    report = tmp_path / "reports" / "rl_speed.json"
    stale = scratch.logs_folder(report) / "old.log"
    stale.parent.mkdir(parents=True)
    stale.write_text("the last run's")
    with pytest.raises(KeyboardInterrupt), scratch.scratch("bench-", report=report) as work:
        (work / "side-1").mkdir()
        (work / "side-1" / "model.safetensors").write_bytes(b"0" * 1000)
        (work / "side-1.log").write_text("step 1")
        (work / "side-1" / "train.log").write_text("inner")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a run
    assert not work.exists()
    kept = scratch.logs_folder(report)
    assert kept == tmp_path / "reports" / "rl_speed-logs"
    assert {p.name: p.read_text() for p in kept.iterdir()} == {"side-1.log": "step 1", "side-1_train.log": "inner"}
    with scratch.scratch("bench-", keep=True) as work:
        (work / "model.bin").write_bytes(b"1")
    assert (work / "model.bin").is_file()
    assert f"work folder kept: {work}" in capsys.readouterr().out


def result(name: str, seconds: float, peak: float, ok: bool = True) -> dict:
    return {"config": name, "ok": ok, "train_seconds": seconds, "peak_rss_gb": peak, "steps": 5}


def test_the_median_run_is_reported_and_failed_runs_are_left_out(sft_speed):
    runs = [result("a", 70.0, 2.0), result("a", 50.0, 2.1), result("a", 90.0, 2.2), result("a", 1.0, 9.0, ok=False)]
    median = sft_speed.median_of("a", runs)
    assert median["train_seconds"] == 70.0 and median["peak_rss_gb"] == 2.0
    assert median["runs"] == 4 and median["train_seconds_all"] == [70.0, 50.0, 90.0, 1.0]
    two = sft_speed.median_of("b", [result("b", 60.0, 1.0), result("b", 40.0, 1.0)])
    assert two["train_seconds"] == 40.0, "an even count reports the lower middle run"


def test_ratios_compare_each_of_ours_with_each_peer(sft_speed):
    results = [
        result("ours: packed", 50.0, 2.0),
        result("MedicalGPT", 100.0, 4.0),
        result("TRL", 75.0, 5.0),
        result("LLaMA-Factory", 1.0, 1.0, ok=False),
    ]
    lines = sft_speed.ratios(results).splitlines()[1:]
    assert len(lines) == 2, "a failed peer gives no ratio"
    assert lines[0].split()[-2:] == ["2.00", "0.50"] and "MedicalGPT" in lines[0]
    assert lines[1].split()[-2:] == ["1.50", "0.40"] and "TRL" in lines[1]
    assert "no peer" in sft_speed.ratios(results[:1])


def test_trl_side_reads_the_last_answer_as_the_completion():
    trl_sft = load("trl_sft")
    row = {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                             {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}  # fmt: skip
    converted = trl_sft.prompt_completion(json.dumps(row))
    assert converted["completion"] == [{"role": "assistant", "content": "a2"}]
    assert [t["role"] for t in converted["prompt"]] == ["user", "assistant", "user"]


def test_llamafactory_side_gets_a_dataset_and_one_output_folder_per_run(sft_speed, tiny_model_dir, tmp_path):
    (tmp_path / "data").mkdir()
    setup = sft_speed.Setup(str(tiny_model_dir), tmp_path, 4, 512, None)
    sides = sft_speed.llamafactory_sides(setup, str(tmp_path / "bin" / "python"))
    assert list(sides) == ["LLaMA-Factory", "LLaMA-Factory (neat_packing)"]
    info = json.loads((tmp_path / "llamafactory-data" / "dataset_info.json").read_text())
    assert info["medical"]["file_name"] == str(tmp_path / "data" / "train.jsonl")
    assert not (tmp_path / "data" / "dataset_info.json").exists(), "our side reads every file in data/"
    _, command, _ = sides["LLaMA-Factory (neat_packing)"]
    assert sft_speed.output_flags(command, tmp_path / "run1") == []
    assert sft_speed.output_flags(command, tmp_path / "run2") == []
    config = Path(command[-1]).read_text()
    assert config.count("output_dir:") == 1 and f"output_dir: {tmp_path / 'run2'}" in config
    assert "neat_packing: true" in config and "cutoff_len: 512" in config and 'lora_target: "all"' in config
    # LLaMA-Factory loads the checkpoint's own dtype: it gets a float32 copy, as every side trains in float32.
    assert f'model_name_or_path: "{tmp_path / "model-float32"}"' in config
    assert json.loads((tmp_path / "model-float32" / "config.json").read_text())["dtype"] == "float32"


def test_sft_step_times_every_dropout_in_turn(tiny_model_dir, monkeypatch, capsys):
    sft_step = load("sft_step")
    argv = ["sft_step.py", "--model", str(tiny_model_dir), "--rounds", "2", "--batch", "1", "--length", "16"]
    monkeypatch.setattr(sys, "argv", argv)
    sft_step.main()
    out = capsys.readouterr().out
    assert out.count("round ") == 2 and "medians of 2 rounds" in out
    for name in sft_step.CONFIGS:
        assert out.count(name) == 3  # once per round, once in the medians
