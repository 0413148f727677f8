"""The chat engine: streamed pieces join to the whole answer; stops, batches, context limit, cancel, tool calls."""

import json
import threading

import pytest

import inference
import supervised_finetuning
from medgpt.chat import TOOL_FORMATS, answer_text, parse_tool_calls
from medgpt.engine import ChatEngine, PromptTooLong, Reply

QUESTION = [{"role": "user", "content": "What helps a fever?"}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> ChatEngine:
    return ChatEngine.load(str(tiny_model_dir), template_name="qwen")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_pieces_join_to_the_whole_answer(engine, seed):
    sampling = {"max_new_tokens": 24, "temperature": 1.0, "seed": seed}
    whole = engine.reply(QUESTION, **sampling)
    stream = engine.stream(QUESTION, **sampling)
    pieces = list(stream)
    assert "".join(pieces) == whole.text == stream.reply.text
    assert stream.reply.completion_tokens == whole.completion_tokens > 0
    assert whole.prompt_tokens == engine.count_tokens(engine.render(QUESTION))


def test_extra_stop_strings_cut_the_answer_and_never_stream(engine):
    free = engine.reply(QUESTION, max_new_tokens=24, temperature=1.0, seed=5).text
    stop = next(ch for ch in free[3:] if ch.strip())  # a character the answer really writes
    stopped = engine.reply(QUESTION, max_new_tokens=24, temperature=1.0, seed=5, stop=[stop])
    assert stop not in stopped.text and free.startswith(stopped.text) and stopped.finish_reason == "stop"
    pieces = list(engine.stream(QUESTION, max_new_tokens=24, temperature=1.0, seed=5, stop=[stop]))
    assert "".join(pieces) == stopped.text and not any(stop in p for p in pieces)


def test_length_limit_is_reported(engine):
    reply = engine.reply(QUESTION, max_new_tokens=3, temperature=1.0, seed=0, stop=[])
    assert reply.finish_reason in ("length", "stop") and reply.completion_tokens <= 3
    forced = engine.reply(QUESTION, max_new_tokens=1, temperature=0)
    assert forced.completion_tokens == 1


def test_batch_equals_single_greedy_answers(engine):
    conversations = [QUESTION, [{"role": "user", "content": "Dose of ibuprofen for an adult with a headache?"}]]
    batched = engine.batch(conversations, max_new_tokens=10, temperature=0)
    single = [engine.reply(c, max_new_tokens=10, temperature=0) for c in conversations]
    assert [r.text for r in batched] == [r.text for r in single]


def test_prompt_longer_than_the_context_is_refused(engine):
    with pytest.raises(PromptTooLong, match="context holds 1024"):
        engine.reply([{"role": "user", "content": "fever " * 2000}], max_new_tokens=8)


def test_cancel_stops_a_stream(engine):
    cancel = threading.Event()
    stream = engine.stream(QUESTION, cancel=cancel, max_new_tokens=400, temperature=1.0, seed=0, stop=[])
    cancel.set()
    list(stream)
    assert stream.reply.finish_reason == "cancelled" and stream.reply.completion_tokens < 400


@pytest.mark.parametrize("tool_format", sorted(TOOL_FORMATS))
def test_tool_calls_written_in_training_format_parse_back(tool_format):
    calls = [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}},
        {"type": "function", "function": {"name": "lookup_drug", "arguments": {"name": "ibuprofen", "dose": 200}}},
    ]
    for content in ("", "Let me check."):
        text = answer_text(tool_format, content, calls)
        parsed_content, parsed = parse_tool_calls(tool_format, text, {"get_weather", "lookup_drug"})
        assert parsed_content == content
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed] == [
            ("get_weather", '{"city": "北京"}'),
            ("lookup_drug", '{"name": "ibuprofen", "dose": 200}'),
        ]
    assert parse_tool_calls(tool_format, "Rest and drink water.", {"get_weather"}) == ("Rest and drink water.", [])
    assert parse_tool_calls(tool_format, answer_text(tool_format, "", calls[:1]), {"other"})[1] == []


def test_inference_refuses_a_prompt_longer_than_the_context(tiny_model_dir, tmp_path):
    from medgpt.errors import UserError

    (tmp_path / "q.txt").write_text("short question\n" + "fever " * 2000 + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"q\.txt, prompt 2: the prompt has \d+ tokens"):
        inference.main(
            ["--base_model", str(tiny_model_dir), "--template_name", "qwen", "--data_file", str(tmp_path / "q.txt")]
            + ["--output_file", str(tmp_path / "out.jsonl")]
        )
    assert not (tmp_path / "out.jsonl").exists()


def teacher_rows(model_dir, prompts, out, *extra):
    return inference.main(
        ["--base_model", str(model_dir), "--template_name", "qwen", "--data_file", str(prompts)]
        + ["--output_file", str(out), "--output_format", "sharegpt", "--system_prompt", "你是一名医生。"]
        + ["--temperature", "0", "--max_new_tokens", "6", "--eval_batch_size", "2", *extra]
    )


def test_teacher_answers_become_sft_rows_and_a_rerun_continues(tiny_model_dir, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": f"问题 {i}：发烧怎么办？"}, ensure_ascii=False) + "\n" for i in range(5)),
        encoding="utf-8",
    )
    out = tmp_path / "sft" / "teacher.jsonl"
    monkeypatch.setattr(ChatEngine, "batch", _answers_of_length("stop"))
    teacher_rows(tiny_model_dir, prompts, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == [f"prompt-{i:06d}" for i in range(5)]
    assert rows[0]["conversations"][:2] == [
        {"from": "system", "value": "你是一名医生。"},
        {"from": "human", "value": "问题 0：发烧怎么办？"},
    ]
    assert rows[0]["conversations"][2]["from"] == "gpt"
    # a killed run: the last row half-written, two rows missing; the rerun answers only those
    text = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(text[:2]) + text[2][:15], encoding="utf-8")
    asked = []
    monkeypatch.setattr(ChatEngine, "batch", _answers_of_length("stop", asked))
    teacher_rows(tiny_model_dir, prompts, out)
    assert asked == [[2, 3], [4]], "only the missing prompts are answered"
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == [
        f"prompt-{i:06d}" for i in range(5)
    ]
    supervised_finetuning.main(
        ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(out.parent), "--template_name", "qwen"]
        + ["--output_dir", str(tmp_path / "student"), "--max_steps", "1", "--report_to", "none"]
        + ["--save_strategy", "no", "--validation_split_percentage", "0", "--use_peft", "True"]
    )
    assert (tmp_path / "student" / "adapter_model.safetensors").is_file()


def test_cut_answers_are_left_out_of_training_rows(tiny_model_dir, tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("发烧怎么办？\n咳嗽怎么办？\n", encoding="utf-8")
    monkeypatch.setattr(ChatEngine, "batch", _answers_of_length("length"))
    teacher_rows(tiny_model_dir, prompts, tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert "2 answers reached --max_new_tokens 6 and were left out" in capsys.readouterr().out


def _answers_of_length(finish_reason: str, asked: list | None = None):
    """A stand-in ChatEngine.batch: a fixed answer per prompt, recording which prompt numbers were asked."""

    def batch(self, conversations, **sampling):
        if asked is not None:
            asked.append([int(c[-1]["content"].split()[1][0]) for c in conversations])
        return [Reply(text="多喝水，休息。", finish_reason=finish_reason) for _ in conversations]

    return batch
