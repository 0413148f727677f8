"""tools/generate_dialogues.py against our own server (the tiny model) and against a stand-in endpoint that fails a
third of its requests (429, 500, dropped connections, timeouts): every dialogue arrives exactly once, a killed run
resumes without duplicates or losses, and the output is training data validate_jsonl.py accepts."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAILURES, FlakyEndpoint, flaky_endpoint, running, write_jsonl

import openai_api
from medgpt.engine import ChatEngine
from medgpt.errors import UserError
from tools import generate_dialogues, validate_jsonl

pytest.importorskip("openai")
ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data" / "roleplay" / "patient_seeds.jsonl"
TIMEOUT = 1.0


def speaker_line(body: dict, number: int) -> str:
    """The stand-in's reply: who speaks, and the number of the answer."""
    speaker = "patient" if "role-playing" in body["messages"][0]["content"] else "clinician"
    return f"{speaker} {number}"


def command(url: str, output: Path, number: int, *extra: str) -> list[str]:
    return [
        "--base_url", url, "--model", "stand-in", "--seed_file", str(SEEDS), "--output_file", str(output),
        "--num_dialogues", str(number), "--turns", "2", "--max_retries", "12", "--timeout", str(TIMEOUT), *extra,
    ]  # fmt: skip


def dialogue_ids(output: Path) -> list[str]:
    return [json.loads(line)["id"] for line in output.read_text(encoding="utf-8").splitlines()]


def expected_ids(number: int) -> list[str]:
    return [f"dialogue-{i:06d}" for i in range(number)]


def test_flaky_endpoint_loses_and_repeats_nothing(tmp_path, capsys):
    output = tmp_path / "dialogues.jsonl"
    with flaky_endpoint(speaker_line) as url:
        extra = ("--concurrency", "4", "--input_price", "2", "--output_price", "8")
        assert generate_dialogues.main(command(url, output, 12, *extra)) == 0
    served = FlakyEndpoint.served
    assert all(served[f] > 0 for f in FAILURES), served
    assert sorted(dialogue_ids(output)) == expected_ids(12)
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    for row in rows:  # a system prompt, then patient (human) and clinician (gpt) twice
        assert [t["from"] for t in row["conversations"]] == ["system", "human", "gpt", "human", "gpt"]
        assert row["conversations"][2]["value"].startswith("clinician")
        assert row["seed"] == int(row["id"][-6:]) % 12
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    # four lines per dialogue, one request each, except a patient's opening line given by the seed; a timed-out
    # answer arrives after the client gave up and is not counted
    seeds = [json.loads(line) for line in SEEDS.read_text(encoding="utf-8").splitlines()]
    assert summary["requests"] == served["ok"] == sum(4 - ("opening" in seeds[i % len(seeds)]) for i in range(12))
    assert summary["prompt_tokens"] == 10 * summary["requests"]
    assert summary["estimated_cost"] == pytest.approx((10 * 2 + 5 * 8) * summary["requests"] / 1e6, abs=1e-4)
    assert validate_jsonl.main(["--file_path", str(output)]) == 0


def test_a_killed_run_resumes_without_duplicates(tmp_path, capsys):
    output = tmp_path / "dialogues.jsonl"
    with flaky_endpoint(speaker_line, delay=0.1) as url:
        tool = [sys.executable, str(ROOT / "tools" / "generate_dialogues.py"), *command(url, output, 30)]
        process = subprocess.Popen(tool, cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if output.is_file() and len(output.read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = output.read_bytes()
        assert 3 <= before.count(b"\n") < 30, "the run was stopped part way"
        with output.open("ab") as f:  # a write cut in the middle, as a crash can leave
            f.write(b'{"id": "dialogue-0000')
        assert generate_dialogues.main(command(url, output, 30, "--concurrency", "4")) == 0
    assert output.read_bytes().startswith(before), "finished dialogues are kept as they were"
    ids = dialogue_ids(output)
    assert len(ids) == len(set(ids)) and sorted(ids) == expected_ids(30)
    assert generate_dialogues.main(command("http://127.0.0.1:9/v1", output, 30)) == 0, "nothing left: no request"
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["requests"] == 0


def test_our_server_with_the_tiny_model(tiny_model_dir, tmp_path):
    output = tmp_path / "dialogues.jsonl"
    app = openai_api.build_app(
        openai_api.ServerArguments(max_new_tokens=12), ChatEngine.load(str(tiny_model_dir)), "m"
    )
    with running(app) as base:
        flags = ["--base_url", f"{base}/v1", "--model", "m", "--seed_file", str(SEEDS), "--output_file", str(output)]
        flags += [
            "--num_dialogues",
            "2",
            "--turns",
            "2",
            "--language",
            "en",
            "--concurrency",
            "2",
            "--max_tokens",
            "16",
        ]
        assert generate_dialogues.main(flags) == 0
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert sorted(row["id"] for row in rows) == expected_ids(2)
    assert all(len(row["conversations"]) == 5 and all(t["value"] for t in row["conversations"]) for row in rows)
    assert validate_jsonl.main(["--file_path", str(output)]) == 0


@pytest.mark.parametrize(
    ("seeds", "flags", "message"),
    [
        (['{"patient": "咳嗽三天"}', "{broken"], [], r"seeds.jsonl:2: invalid JSON"),
        (['{"profile": "咳嗽三天"}'], [], r"seeds.jsonl:1: a seed needs a 'patient' profile"),
        (['{"patient": "咳嗽三天", "staff": "surgeon"}'], [], r"seeds.jsonl:1: field 'staff' is 'surgeon'"),
        (['{"patient": "咳嗽三天"}'], ["--language", "fr"], "--language fr"),
        (['{"patient": "咳嗽三天"}'], ["--concurrency", "0"], "--concurrency 0"),
    ],
)
def test_bad_seeds_and_flags_are_named(tmp_path, seeds, flags, message):
    seed_file = write_jsonl(tmp_path / "seeds.jsonl", seeds)
    flags = ["--base_url", "http://127.0.0.1:9/v1", "--model", "m", "--seed_file", str(seed_file), *flags]
    with pytest.raises(UserError, match=message):
        generate_dialogues.main([*flags, "--output_file", str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()


def test_an_output_file_of_something_else_is_refused(tmp_path):
    output = write_jsonl(tmp_path / "train.jsonl", [{"conversations": []}])
    with pytest.raises(UserError, match=r"train.jsonl:1: not a dialogue line of this tool"):
        generate_dialogues.main(command("http://127.0.0.1:9/v1", output, 2))
    assert output.read_text(encoding="utf-8") == '{"conversations": []}\n'
