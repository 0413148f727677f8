"""tools/check_contamination.py: a planted, reworded leak of an evaluation item is found with both locations (in
English and Chinese, for a chat item and a multiple-choice item); our own training data leaks nothing."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from medgpt.datatools.sources import tokens
from medgpt.errors import UserError
from tools import check_contamination

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "data" / "eval"


def eval_row(relative: str, line: int) -> dict:
    return json.loads((EVAL / relative).read_text(encoding="utf-8").splitlines()[line - 1])


def planted_training(tmp_path: Path) -> Path:
    bee = eval_row("sft/heldout.jsonl", 40)["conversations"]
    hives = eval_row("mcq/medical_mcq.jsonl", 1)
    zh = next(
        (number, row)
        for number, row in enumerate(map(json.loads, (EVAL / "sft/heldout.jsonl").read_text().splitlines()), 1)
        if any("\u4e00" <= c <= "\u9fff" for c in row["conversations"][0]["value"])
    )
    turns = {turn["from"]: turn["value"] for turn in zh[1]["conversations"]}
    zh_question, zh_answer = turns["human"], turns["gpt"]
    rows = [
        {"instruction": "How do I treat a cold?", "output": "Rest, drink fluids and use paracetamol for fever."},
        {  # reworded: another question, some words swapped, one sentence dropped
            "instruction": "A bee stung me, what should I do?",
            "output": bee[1]["value"]
            .replace("as soon as possible", "quickly")
            .replace("Avoid scratching, as it can cause infection.", ""),
        },
        {"instruction": "Explain hives.", "output": "Hives are itchy welts; most go away within days."},
        {  # the multiple-choice item written out as a chat, options reordered
            "instruction": f"{hives['question']} Options: " + ", ".join(sorted(hives["options"].values())),
            "output": f"The answer is {hives['answer']}: {hives['options'][hives['answer']]}.",
        },
        {"instruction": zh_question.replace("？", "呢？"), "output": zh_answer.replace("。", "；", 1)},
    ]
    write_jsonl(tmp_path / "train" / "train.jsonl", rows)
    return tmp_path / "train", zh[0]


def test_planted_leaks_are_found_with_both_locations(tmp_path, capsys):
    train, zh_line = planted_training(tmp_path)
    out = tmp_path / "clean"
    code = check_contamination.main(
        ["--train_file_dir", str(train), "--eval_file_dir", str(EVAL), "--output_dir", str(out)]
    )
    assert code == 1
    leaks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    found = {
        (leak["train_line"], Path(leak["eval_file"]).relative_to(EVAL).as_posix(), leak["eval_line"]) for leak in leaks
    }
    assert {(2, "sft/heldout.jsonl", 40), (4, "mcq/medical_mcq.jsonl", 1), (5, "sft/heldout.jsonl", zh_line)} <= found
    assert {leak["train_line"] for leak in leaks} == {2, 4, 5}, "the unrelated rows are not leaks"
    assert all(leak["overlap"] >= 0.7 for leak in leaks)
    kept = [json.loads(line)["instruction"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert kept == ["How do I treat a cold?", "Explain hives."]


@pytest.mark.parametrize("folder", ["sft", "pretrain", "reward", "grpo"])
def test_our_training_data_leaks_nothing(folder, capsys):
    code = check_contamination.main(["--train_file_dir", str(ROOT / "data" / folder), "--eval_file_dir", str(EVAL)])
    assert code == 0 and capsys.readouterr().out == ""


def test_bad_threshold_is_named():
    with pytest.raises(UserError, match="--threshold 1.5"):
        check_contamination.main(
            ["--train_file_dir", str(ROOT / "data" / "sft"), "--eval_file_dir", str(EVAL), "--threshold", "1.5"]
        )


def test_an_items_words_scattered_through_a_long_text_are_not_a_leak(tmp_path, capsys):
    item = {"question": "Which hormone lowers blood glucose after a meal?", "answer": "Insulin lowers blood glucose."}
    eval_file = write_jsonl(tmp_path / "eval" / "qa.jsonl", [item])
    words = tokens(f"{item['question']} {item['answer']}")
    filler = " ".join(f"w{i}" for i in range(40))
    scattered = " ".join(f"{a} {b} {filler}" for a, b in zip(words, words[1:], strict=False))
    write_jsonl(tmp_path / "train" / "a.jsonl", [{"instruction": "Notes", "output": scattered}])
    assert (
        check_contamination.main(["--train_file_dir", str(tmp_path / "train"), "--eval_file_dir", str(eval_file)]) == 0
    )
    copied = f"{filler} {' '.join(words)} {filler}"  # the same words in one place: a copy inside a long text
    write_jsonl(tmp_path / "train" / "a.jsonl", [{"instruction": "Notes", "output": copied}])
    assert (
        check_contamination.main(["--train_file_dir", str(tmp_path / "train"), "--eval_file_dir", str(eval_file)]) == 1
    )
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["overlap"] == 1.0
