"""tools/validate_jsonl.py: every problem as file:line:field with exit code 1, and statistics checked on a known
file."""

import json
from pathlib import Path

from conftest import write_jsonl

from medgpt.datatools.validate import percentiles
from tools import validate_jsonl

ROOT = Path(__file__).resolve().parents[1]


def report(capsys, *flags) -> tuple[int, dict]:
    code = validate_jsonl.main([*flags, "--json", "True"])
    return code, json.loads(capsys.readouterr().out)


def known_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "sft" / "known.jsonl",
        [
            {"conversations": [{"from": "human", "value": "头痛"}, {"from": "gpt", "value": "请休息。"}]},
            {
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello there"},
                    {"from": "human", "value": "Fever?"},
                    {"from": "gpt", "value": "请休息。"},
                ]
            },
            {"instruction": "Dose?", "output": "x" * 40},
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "w", "arguments": {}}}]},
                    {"role": "tool", "content": "sunny"},
                    {"role": "assistant", "content": "It is sunny."},
                ]
            },
        ],
    )


def test_statistics_of_a_known_file(tmp_path, capsys):
    code, result = report(capsys, "--file_path", str(known_file(tmp_path)), "--model_max_length", "30")
    assert code == 0 and result["problems"] == []
    assert result["rows"] == {"chat": 4}
    assert result["turns"] == 6  # assistant turns: 1 + 2 + 1 + 2
    assert result["duplicate_answers"] == 1 and result["duplicate_answer_rows"][0]["row"].endswith("known.jsonl:2")
    assert result["tool_call_rows"] == 1
    # characters: questions "头痛", "Hi\nFever?", "Dose?", "Weather?"; answers joined by newlines
    assert result["question_characters"] == percentiles([2, 9, 5, 8])
    assert result["answer_characters"]["p100"] == 40
    assert result["max_length"]["cut"] == 1  # only "Dose?" + 40 characters exceeds 30
    assert 0 < result["cjk_share"] < 1


def test_percentiles_are_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "p100": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "p100": 7}


def test_token_lengths_and_cut_rows_with_a_template(tmp_path, capsys, tiny_model_dir):
    flags = ["--file_path", str(known_file(tmp_path)), "--model_name_or_path", str(tiny_model_dir)]
    code, result = report(capsys, *flags, "--template_name", "chatml", "--model_max_length", "8")
    assert code == 0
    assert set(result["question_tokens"]) == {"p50", "p90", "p99", "p100"}
    assert result["max_length"]["counted"] == "as training renders chats"
    assert result["max_length"]["cut"] + result["max_length"]["dropped"] == 4


def test_every_problem_is_listed_with_file_line_and_field(tmp_path, capsys):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            "{broken",
            {"conversations": [{"from": "doctor", "value": "q"}]},
            {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]},
        ],
    )
    code, result = report(capsys, "--file_path", str(path))
    assert code == 1
    assert [p.split(": ")[0] for p in result["problems"]] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "conversations[0].from" in result["problems"][1] and "conversations[0].value" in result["problems"][2]
    assert result["rows"] == {"chat": 1}


def test_preference_rows_are_checked_too(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    code, result = report(capsys, "--file_path", str(path), "--kind", "reward")
    assert code == 1 and "identical to 'chosen'" in result["problems"][0]


def test_our_data_is_clean(capsys):
    for folder in ("sft", "pretrain", "reward", "grpo", "eval"):
        code, result = report(capsys, "--file_path", str(ROOT / "data" / folder))
        assert code == 0 and result["problems"] == [], folder


def test_medicalgpt_tool_call_sample_is_valid(reference_data, capsys):
    code, result = report(capsys, "--file_path", str(reference_data / "sft" / "glaive_toolcall_zh_demo.jsonl"))
    assert code == 0 and result["tool_call_rows"] > 0
