"""tools/convert_dataset.py: every input format into ShareGPT / OpenAI rows that read back to the same conversation,
bad rows reported as file:line, nothing written on an error, and the result trains."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

import supervised_finetuning
from medgpt.datatools.sources import file_kind, read_file
from medgpt.errors import UserError
from medgpt.formats import ReadReport
from tools import convert_dataset

ROOT = Path(__file__).resolve().parents[1]


def normalized(path: Path, kind: str | None = None) -> list[dict]:
    return [row.row for row in read_file(path, file_kind(path, kind), False, ReadReport())]


def convert(tmp_path: Path, *flags: str) -> Path:
    out = tmp_path / "out.jsonl"
    convert_dataset.main([*flags, "--out_file", str(out)])
    return out


@pytest.mark.parametrize("name", ["medical_alpaca.json", "medical_sharegpt.jsonl", "pharmacy_tools_openai.jsonl"])
@pytest.mark.parametrize("output_format", ["sharegpt", "messages"])
def test_our_chat_files_convert_to_the_same_conversations(name, output_format, tmp_path):
    source = ROOT / "data" / "sft" / name
    data_type = {"medical_alpaca.json": "alpaca", "medical_sharegpt.jsonl": "sharegpt"}.get(name, "messages")
    out = convert(tmp_path, "--in_file", str(source), "--data_type", data_type, "--output_format", output_format)
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert ("conversations" if output_format == "sharegpt" else "messages") in first
    assert normalized(out) == normalized(source)


def test_medicalgpt_sample_files_convert(reference_data, tmp_path):
    for folder, data_type in (("sft", "sharegpt"), ("reward", "preference")):
        for source in sorted((reference_data / folder).glob("*.jsonl")):
            out = convert(tmp_path, "--in_file", str(source), "--data_type", data_type)
            kind = "sft" if folder == "sft" else "reward"
            assert normalized(out, kind) == normalized(source, kind), source.name


@pytest.mark.parametrize("name", ["medical_pairs.jsonl", "trl_style_pairs.jsonl"])
def test_preference_rows_keep_prompt_chosen_and_rejected(name, tmp_path):
    source = ROOT / "data" / "reward" / name
    out = convert(tmp_path, "--in_file", str(source), "--data_type", "preference")
    assert normalized(out, "reward") == normalized(source, "reward")


def test_csv_with_named_columns_system_and_history(tmp_path):
    source = tmp_path / "qa.csv"
    source.write_text(
        "问题,回答,系统,历史\n"
        '发烧怎么办？,多喝水，体温超过38.5℃可服退烧药。,你是医生。,"[[""你好"", ""你好，请问哪里不舒服？""]]"\n'
        '"What is a normal resting heart rate?","Between 60 and 100 beats per minute for most adults.",,\n',
        encoding="utf-8",
    )
    out = convert(
        tmp_path,
        *("--in_file", str(source), "--data_type", "qa", "--question_column", "问题", "--answer_column", "回答"),
        *("--system_column", "系统", "--history_column", "历史"),
    )
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["conversations"] == [
        {"from": "system", "value": "你是医生。"},
        {"from": "human", "value": "你好"},
        {"from": "gpt", "value": "你好，请问哪里不舒服？"},
        {"from": "human", "value": "发烧怎么办？"},
        {"from": "gpt", "value": "多喝水，体温超过38.5℃可服退烧药。"},
    ]
    assert [t["from"] for t in rows[1]["conversations"]] == ["human", "gpt"]


def test_tsv_without_header_as_medicalgpt_wrote_it(tmp_path):
    source = tmp_path / "qa.tsv"
    source.write_text("头痛怎么办？\t注意休息，持续不缓解请就医。\nIs ibuprofen an NSAID?\tYes.\n", encoding="utf-8")
    out = convert(
        tmp_path,
        *("--in_file", str(source), "--data_type", "qa", "--header", "False"),
        *("--question_column", "0", "--answer_column", "1"),
    )
    assert len(normalized(out)) == 2


def test_plain_text_per_line_and_per_file(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("first note\n\nsecond note\n", encoding="utf-8")
    (folder / "b.txt").write_text("a whole\ndocument\n", encoding="utf-8")
    out = convert(tmp_path, "--in_file", str(folder), "--data_type", "text")
    assert [r["text"] for r in normalized(out, "pt")] == ["first note", "second note", "a whole", "document"]
    out = convert(tmp_path, "--in_file", str(folder), "--data_type", "text", "--text_per_file", "True")
    assert [r["text"] for r in normalized(out, "pt")] == ["first note\n\nsecond note", "a whole\ndocument"]


def test_bad_rows_name_file_and_line_and_leave_no_output(tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"instruction": "q1", "output": "a1"},
            "{not json",
            {"instruction": "q3"},
            {"instruction": "q4", "output": "a"},
        ],
    )
    out = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match=r"in\.jsonl:2: invalid JSON"):
        convert_dataset.main(["--in_file", str(source), "--out_file", str(out)])
    assert not out.exists()
    summary = convert_dataset.main(["--in_file", str(source), "--out_file", str(out), "--skip_bad_rows", "True"])
    assert summary["rows"] == 2 and sum(summary["skipped"].values()) == 2
    csv_file = tmp_path / "bad.csv"
    csv_file.write_text("question,answer\nq,a\nonly one column\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.csv:3: .*1 columns, the header has 2"):
        convert_dataset.main(["--in_file", str(csv_file), "--out_file", str(out), "--data_type", "qa"])
    with pytest.raises(UserError, match=r"bad\.csv:2: field 'question_text'.*--question_column"):
        convert_dataset.main(
            ["--in_file", str(csv_file), "--out_file", str(out), "--data_type", "qa", "--question_column"]
            + ["question_text"]
        )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--data_type", "yaml"], "--data_type yaml: use one of"),
        (["--output_format", "alpaca"], "--output_format alpaca"),
        (["--file_type", "xml"], "--file_type xml"),
    ],
)
def test_bad_flags_are_named(flags, message, tmp_path):
    with pytest.raises(UserError, match=message):
        convert(tmp_path, "--in_file", str(ROOT / "data" / "sft"), *flags)


def test_converted_file_trains(tiny_model_dir, tmp_path):
    source = tmp_path / "qa.csv"
    source.write_text(
        "question,answer\n" + "".join(f"Question {i}?,Answer {i}.\n" for i in range(8)), encoding="utf-8"
    )
    data = tmp_path / "data"
    convert_dataset.main(["--in_file", str(source), "--out_file", str(data / "sft.jsonl"), "--data_type", "qa"])
    supervised_finetuning.main(
        ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(data), "--template_name", "chatml"]
        + ["--output_dir", str(tmp_path / "sft"), "--max_steps", "1", "--per_device_train_batch_size", "2"]
        + ["--report_to", "none", "--save_strategy", "no", "--validation_split_percentage", "0"]
    )
    assert (tmp_path / "sft" / "adapter_model.safetensors").is_file()
