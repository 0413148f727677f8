"""Reading data: format detection, normalization, row validation with file/line errors, splits."""

import json

import pytest
from conftest import write_jsonl

from medgpt.args import DataArguments
from medgpt.data import load_datasets
from medgpt.errors import UserError
from medgpt.formats import ReadReport, RowError, normalize_chat


def messages_of(row: dict) -> list[dict]:
    return json.loads(normalize_chat(row, ReadReport())["messages"])


def test_sharegpt_roles_system_and_tool_calls():
    row = {
        "conversations": [
            {"from": "system", "value": "You are a nurse."},
            {"from": "human", "value": "Weather in Beijing?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": "{\\"city\\": \\"Beijing\\"}"}'},
            {"from": "observation", "value": '{"temp": 20}'},
            {"from": "gpt", "value": "It is 20 degrees."},
        ],
        "tools": '[{"name": "get_weather", "parameters": {}}]',
    }
    normalized = normalize_chat(row, ReadReport())
    messages = json.loads(normalized["messages"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Beijing"}}
    assert json.loads(normalized["tools"])[0]["name"] == "get_weather"


def test_alpaca_with_history_and_system():
    messages = messages_of(
        {
            "instruction": "Dose?",
            "input": "Ibuprofen",
            "output": "200 mg.",
            "system": "Be brief.",
            "history": [["Hi", "Hello."]],
        }
    )
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Dose?\nIbuprofen"},
        {"role": "assistant", "content": "200 mg."},
    ]


def test_openai_messages_with_tool_calls():
    messages = messages_of(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": '{"c": 1}'}}],
                },
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ]
        }
    )
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {"c": 1}}}],
    }


def test_unanswered_question_rows_are_skipped_and_counted(tmp_path, caplog):
    write_jsonl(tmp_path / "d" / "a.jsonl", [GOOD, {"conversations": [{"from": "human", "value": "alone"}]}])
    with caplog.at_level("INFO"):
        splits = load_datasets(
            DataArguments(train_file_dir=str(tmp_path / "d"), validation_split_percentage=0), "chat"
        )
    assert len(splits["train"]) == 1
    assert "skipped 1 rows: conversation without any answer" in caplog.text


def test_trailing_question_is_dropped_and_counted():
    report = ReadReport()
    row = {
        "conversations": [
            {"from": "human", "value": "a"},
            {"from": "gpt", "value": "b"},
            {"from": "human", "value": "c"},
        ]
    }
    messages = json.loads(normalize_chat(row, report)["messages"])
    assert [m["content"] for m in messages] == ["a", "b"]
    assert sum(report.notes.values()) == 1


@pytest.mark.parametrize(
    "row, field_text",
    [
        ({"conversations": [{"from": "doctor", "value": "a"}]}, "unknown role 'doctor'"),
        (
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "human", "value": "b"},
                    {"from": "gpt", "value": "c"},
                ]
            },
            "'user' turn cannot follow",
        ),
        ({"conversations": [{"from": "gpt", "value": "a"}]}, "cannot follow the start"),
        ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}]}, "expected a string"),
        ({"instruction": "x"}, "'output'"),
        ({"question": "x"}, "unknown chat format"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}, "cannot follow"),
    ],
)
def test_bad_rows_are_rejected_with_the_field(row, field_text):
    with pytest.raises(RowError, match=field_text):
        normalize_chat(row, ReadReport())


GOOD = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}


@pytest.mark.parametrize(
    "lines, where, text",
    [
        ([GOOD, '{"conversations": [', GOOD], ":2:", "invalid JSON"),
        ([GOOD, GOOD, {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}], ":3:", '"value"'),
        ([GOOD, {"conversations": [{"from": "robot", "value": "q"}]}], ":2:", "unknown role 'robot'"),
        (
            [{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}],
            ":1:",
            "cannot follow",
        ),
        ([{"conversations": [{"from": "human"}]}], ":1:", '"from" and "value"'),
    ],
)
def test_file_errors_name_file_and_line(tmp_path, lines, where, text):
    path = write_jsonl(tmp_path / "train" / "bad.jsonl", lines)
    with pytest.raises(UserError) as err:
        load_datasets(DataArguments(train_file_dir=str(tmp_path / "train")), "chat")
    message = str(err.value)
    assert f"{path}{where}" in message and text in message and "--skip_bad_rows" in message


def test_empty_file_and_empty_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="holds no"):
        load_datasets(DataArguments(train_file_dir=str(tmp_path / "train")), "chat")
    (tmp_path / "train" / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match=r"empty\.jsonl: no rows found"):
        load_datasets(DataArguments(train_file_dir=str(tmp_path / "train")), "chat")


def test_skip_bad_rows_counts_them(tmp_path, caplog):
    write_jsonl(
        tmp_path / "train" / "a.jsonl", [GOOD, "{oops", {"conversations": [{"from": "x", "value": "y"}]}, GOOD]
    )
    args = DataArguments(train_file_dir=str(tmp_path / "train"), skip_bad_rows=True, validation_split_percentage=0)
    with caplog.at_level("INFO"):
        splits = load_datasets(args, "chat")
    assert len(splits["train"]) == 2
    assert "2 skipped" in caplog.text


def test_recursive_folders_json_arrays_and_mixed_formats(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [GOOD])
    write_jsonl(tmp_path / "d" / "sub" / "b.jsonl", [{"instruction": "i", "output": "o"}])
    (tmp_path / "d" / "sub" / "c.json").write_text(
        json.dumps([{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}]}])
    )
    splits = load_datasets(DataArguments(train_file_dir=str(tmp_path / "d"), validation_split_percentage=0), "chat")
    assert len(splits["train"]) == 3 and "validation" not in splits


def test_validation_split_is_never_empty(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [GOOD] * 5)
    splits = load_datasets(DataArguments(train_file_dir=str(tmp_path / "d"), validation_split_percentage=1), "chat")
    assert len(splits["validation"]) == 1 and len(splits["train"]) == 4


def test_validation_dir_is_used(tmp_path):
    write_jsonl(tmp_path / "t" / "a.jsonl", [GOOD] * 3)
    write_jsonl(tmp_path / "v" / "a.jsonl", [GOOD] * 2)
    splits = load_datasets(
        DataArguments(train_file_dir=str(tmp_path / "t"), validation_file_dir=str(tmp_path / "v")), "chat"
    )
    assert (len(splits["train"]), len(splits["validation"])) == (3, 2)


def test_pretraining_text_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("first doc\n\nsecond doc\n")
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"text": "third doc"}])
    splits = load_datasets(DataArguments(train_file_dir=str(tmp_path / "d"), validation_split_percentage=0), "text")
    assert sorted(splits["train"]["text"]) == ["first doc\n", "second doc\n", "third doc"]
    no_breaks = load_datasets(
        DataArguments(train_file_dir=str(tmp_path / "d"), validation_split_percentage=0), "text", keep_linebreaks=False
    )
    assert "first doc" in no_breaks["train"]["text"]
    write_jsonl(tmp_path / "d" / "c.jsonl", [{"content": "x"}])
    with pytest.raises(UserError, match=r"c\.jsonl:1: field 'text'"):
        load_datasets(DataArguments(train_file_dir=str(tmp_path / "d")), "text")


def test_dataset_name_local_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list([GOOD, GOOD, GOOD]).save_to_disk(str(tmp_path / "saved"))
    splits = load_datasets(DataArguments(dataset_name=str(tmp_path / "saved"), validation_split_percentage=0), "chat")
    assert len(splits["train"]) == 3
    with pytest.raises(UserError, match="--dataset_name"):
        load_datasets(DataArguments(dataset_name=str(tmp_path / "missing-dataset")), "chat")


def test_medicalgpt_sample_data_loads(reference_data):
    args = DataArguments(train_file_dir=str(reference_data / "sft"), validation_split_percentage=0)
    splits = load_datasets(args, "chat")
    assert len(splits["train"]) >= 2200  # 1000 medical + ~1000 multi-turn + 300 tool-call rows, none rejected
    tool_rows = [m for m in splits["train"]["messages"] if '"tool_calls"' in m]
    assert tool_rows
    text = load_datasets(
        DataArguments(train_file_dir=str(reference_data / "pretrain"), validation_split_percentage=0), "text"
    )
    assert len(text["train"]) > 1000


def test_rows_are_cached_and_a_changed_file_is_read_again(tmp_path, caplog):
    path = write_jsonl(tmp_path / "d" / "a.jsonl", [GOOD, GOOD])
    args = DataArguments(train_file_dir=str(tmp_path / "d"), validation_split_percentage=0)
    cache = tmp_path / "cache"
    first = load_datasets(args, "chat", cache_dir=str(cache))["train"]
    assert first.cache_files and str(cache) in first.cache_files[0]["filename"], "--cache_dir holds the data"
    with caplog.at_level("INFO"):
        load_datasets(args, "chat", cache_dir=str(cache))
    assert "read from the datasets cache" in caplog.text
    write_jsonl(path, [GOOD, GOOD, GOOD])
    assert len(load_datasets(args, "chat", cache_dir=str(cache))["train"]) == 3


def test_skip_summary_is_shown_again_on_a_cache_hit(tmp_path, caplog):
    write_jsonl(tmp_path / "d" / "a.jsonl", [GOOD, "{oops", GOOD])
    args = DataArguments(train_file_dir=str(tmp_path / "d"), skip_bad_rows=True, validation_split_percentage=0)
    load_datasets(args, "chat", cache_dir=str(tmp_path / "cache"))
    with caplog.at_level("INFO"):
        load_datasets(args, "chat", cache_dir=str(tmp_path / "cache"))
    assert "read from the datasets cache" in caplog.text and "skipped 1 rows: invalid JSON" in caplog.text


def test_all_rows_skipped_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"x": 1}, {"y": 2}])
    with pytest.raises(UserError, match="every row was skipped"):
        load_datasets(DataArguments(train_file_dir=str(tmp_path / "d"), skip_bad_rows=True), "chat")


# ---------------------------------------------------------------- prompt rows (PPO, GRPO, batch inference)


def prompt_of(row: dict) -> dict:
    from medgpt.formats import normalize_prompt_row

    normalized = normalize_prompt_row(row)
    return {**normalized, "prompt": json.loads(normalized["prompt"])}


def test_chat_prompt_rows_keep_history_and_take_the_final_answer_as_reference():
    row = prompt_of(
        {
            "conversations": [
                {"from": "system", "value": "You are a nurse."},
                {"from": "human", "value": "I have a fever."},
                {"from": "gpt", "value": "How high?"},
                {"from": "human", "value": "39 degrees."},
                {"from": "gpt", "value": "Take paracetamol and rest."},
            ]
        }
    )
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "user"]
    assert row["answer"] == "Take paracetamol and rest." and row["options"] == ""
    unanswered = prompt_of({"messages": [{"role": "user", "content": "Dose?"}]})
    assert unanswered["prompt"] == [{"role": "user", "content": "Dose?"}] and unanswered["answer"] == ""


def test_question_answer_alpaca_and_prompt_rows():
    assert prompt_of({"question": "膺窗穴在哪里？", "answer": "第3肋间隙。"})["answer"] == "第3肋间隙。"
    alpaca = prompt_of({"instruction": "Dose?", "input": "Ibuprofen", "output": "400 mg", "system": "Be brief."})
    assert alpaca["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Dose?\nIbuprofen"},
    ]
    assert alpaca["answer"] == "400 mg"
    trl_style = prompt_of({"prompt": [{"role": "user", "content": "Hi"}], "solution": "42", "level": 3})
    assert trl_style["answer"] == "42" and json.loads(trl_style["extra"]) == {"level": 3}


def test_multiple_choice_rows_list_the_options_and_keep_the_letters():
    row = prompt_of({"question": "Universal donor?", "options": {"A": "AB+", "B": "O-"}, "answer": "b"})
    assert row["prompt"][-1]["content"] == "Universal donor?\nA. AB+\nB. O-"
    assert row["answer"] == "B" and json.loads(row["options"]) == {"A": "AB+", "B": "O-"}
    assert prompt_of({"question": "Q", "options": ["x", "y", "z"], "answer": 2})["answer"] == "C"  # MedMCQA's cop
    assert prompt_of({"question": "Q", "options": ["x", "y", "z"], "answer": "A, C"})["answer"] == "AC"


@pytest.mark.parametrize(
    ("row", "text"),
    [
        ({"question": "Q", "options": {"A": "x"}, "answer": "E"}, r"'E' is not among the option letters A"),
        ({"question": "Q", "options": 5}, r"field 'options'"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "no user turn"),
        ({"answer": "only"}, r"no prompt found \(keys: 'answer'\)"),
        ({"question": 7}, r"field 'question': expected a string"),
    ],
)
def test_bad_prompt_rows_name_the_field(row, text):
    from medgpt.formats import normalize_prompt_row

    with pytest.raises(RowError, match=text):
        normalize_prompt_row(row)


def test_prompt_files_share_the_reader_errors_and_skip_bad_rows(tmp_path):
    write_jsonl(tmp_path / "p" / "train.jsonl", [{"question": "Q1", "answer": "A1"}, {"nothing": 1}, "{broken"])
    with pytest.raises(UserError, match=r"train\.jsonl:2: .*no prompt found"):
        load_datasets(DataArguments(train_file_dir=str(tmp_path / "p"), validation_split_percentage=0), "prompt")
    data = load_datasets(
        DataArguments(train_file_dir=str(tmp_path / "p"), validation_split_percentage=0, skip_bad_rows=True), "prompt"
    )
    assert data["train"]["answer"] == ["A1"]


def test_prepare_splits_one_rule_for_empty_splits(tmp_path, caplog):
    from datasets import Dataset, DatasetDict
    from transformers import TrainingArguments

    from medgpt.data import prepare_splits

    raw = DatasetDict({"train": Dataset.from_dict({"x": [1, 2, 3]}), "validation": Dataset.from_dict({"x": [4]})})
    training = TrainingArguments(output_dir=str(tmp_path), do_eval=True, use_cpu=True)
    data_args = DataArguments(max_train_samples=2)
    splits = prepare_splits(raw, data_args, training, lambda rows, name: rows, "never")
    assert len(splits["train"]) == 2 and len(splits["validation"]) == 1
    splits = prepare_splits(
        raw, data_args, training, lambda rows, name: rows.select([]) if name != "train" else rows, "x"
    )
    assert "validation" not in splits and "evaluation is skipped" in caplog.text
    with pytest.raises(UserError, match="no training data left: raise the limit"):
        prepare_splits(raw, data_args, training, lambda rows, name: rows.select([]), "raise the limit")
    stepped = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", use_cpu=True)
    with pytest.raises(UserError, match="needs an eval split"):
        prepare_splits(raw, data_args, stepped, lambda rows, name: rows.select([]) if name != "train" else rows, "x")
