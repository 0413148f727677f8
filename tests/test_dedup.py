"""tools/dedup.py: planted exact and near duplicates (Chinese and English, within and across files) are dropped
with the row they copy; nothing else in our data; same file names and formats; deterministic."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from medgpt.datatools.dedup import similarity
from medgpt.errors import UserError
from tools import dedup

ROOT = Path(__file__).resolve().parents[1]
ZH = "高血压患者应该低盐饮食，每天食盐不超过五克，同时规律运动、戒烟限酒，并按医嘱长期服用降压药，定期监测血压。"
EN = (
    "People with high blood pressure should eat less salt, exercise regularly, stop smoking, limit alcohol, take "
    "their medicines every day as prescribed and check their blood pressure at home."
)


def chat(question: str, answer: str) -> dict:
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def planted(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write_jsonl(
        data / "a.jsonl",
        [
            chat("高血压怎么调理？", ZH),
            chat("What helps high blood pressure?", EN),
            chat("感冒了怎么办？", "多休息，多喝水，发热超过三天请就医。"),
            chat("高血压怎么调理？", ZH),  # exact copy of line 1
        ],
    )
    (data / "b.json").write_text(
        json.dumps(
            [
                {"instruction": "  what helps HIGH blood pressure? ", "output": EN.upper()},  # exact up to case/space
                {"instruction": "高血压平时怎么调理？", "output": ZH.replace("五克", "5克")},  # near, Chinese
                {"instruction": "What helps high blood pressure?", "output": EN.replace("every day", "daily")},  # near
                {"instruction": "How is asthma treated?", "output": "With inhaled steroids and relievers."},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    return data


def test_planted_duplicates_are_dropped_and_named(tmp_path):
    out = tmp_path / "out"
    summary = dedup.main(["--train_file_dir", str(planted(tmp_path)), "--output_dir", str(out)])
    assert summary["rows"] == 8 and summary["kept"] == 4
    assert summary["dropped"] == {"exact": 2, "near": 2}
    report = [json.loads(line) for line in Path(summary["report"]).read_text().splitlines()]
    found = {
        (Path(r["file"]).name, r["line"]): (Path(r["of_file"]).name, r["of_line"], r["duplicate"]) for r in report
    }
    assert found == {
        ("a.jsonl", 4): ("a.jsonl", 1, "exact"),
        ("b.json", 1): ("a.jsonl", 2, "exact"),
        ("b.json", 2): ("a.jsonl", 1, "near"),
        ("b.json", 3): ("a.jsonl", 2, "near"),
    }
    assert len((out / "a.jsonl").read_text().splitlines()) == 3
    kept_b = json.loads((out / "b.json").read_text())
    assert kept_b == [{"instruction": "How is asthma treated?", "output": "With inhaled steroids and relievers."}]


def test_result_is_deterministic_and_threshold_one_keeps_near_copies(tmp_path):
    data = planted(tmp_path)
    first = dedup.main(["--train_file_dir", str(data), "--output_dir", str(tmp_path / "o1")])
    second = dedup.main(["--train_file_dir", str(data), "--output_dir", str(tmp_path / "o2")])
    assert Path(first["report"]).read_text() == Path(second["report"]).read_text()
    strict = dedup.main(["--train_file_dir", str(data), "--output_dir", str(tmp_path / "o3"), "--threshold", "1"])
    assert strict["dropped"].get("near", 0) == 0 and strict["dropped"]["exact"] == 2


def test_near_copies_are_above_the_default_threshold_and_distinct_answers_far_below():
    # the planted near copies, exactly: well above 0.7, so MinHash's estimate (about +-0.04) cannot miss them
    assert similarity(f"高血压怎么调理？\n{ZH}", f"高血压平时怎么调理？\n{ZH.replace('五克', '5克')}") > 0.78
    question = "What helps high blood pressure?\n"
    assert similarity(question + EN, question + EN.replace("every day", "daily")) > 0.78
    assert similarity(ZH, "多休息，多喝水，发热超过三天请就医。") < 0.1


@pytest.mark.parametrize("folder", ["sft", "pretrain", "reward", "grpo"])
def test_nothing_is_dropped_from_our_data(folder, tmp_path):
    summary = dedup.main(["--train_file_dir", str(ROOT / "data" / folder), "--output_dir", str(tmp_path / "out")])
    assert summary["dropped"] == {} and summary["kept"] == summary["rows"]


def test_text_files_keep_their_lines(tmp_path):
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "notes.txt").write_text(f"{EN}\n{EN}\nsomething else entirely\n", encoding="utf-8")
    dedup.main(["--train_file_dir", str(tmp_path / "pt"), "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "notes.txt").read_text(encoding="utf-8") == f"{EN}\nsomething else entirely\n"


def test_output_folder_checks(tmp_path):
    data = planted(tmp_path)
    with pytest.raises(UserError, match="holds the input files"):
        dedup.main(["--train_file_dir", str(data), "--output_dir", str(data)])
    with pytest.raises(UserError, match="holds the input files"):
        dedup.main(["--train_file_dir", str(data), "--output_dir", str(tmp_path)])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="--overwrite True"):
        dedup.main(["--train_file_dir", str(data), "--output_dir", str(tmp_path / "busy")])
    with pytest.raises(UserError, match="--threshold 0"):
        dedup.main(["--train_file_dir", str(data), "--output_dir", str(tmp_path / "o"), "--threshold", "0"])
