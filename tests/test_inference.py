"""Batch and terminal answers (medgpt.inference behind inference.py and chatpdf.py): grounded answers with their
sources, several processes under torchrun writing what one process writes, and a stopped run continued."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

import chatpdf
import inference
from medgpt.engine import ChatEngine, Reply
from medgpt.retrieval.knowledge import KnowledgeBase

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "婴儿发热要去医院吗？",
    "What INR range should I aim for on warfarin?",
    "带状疱疹会传染吗？",  # in no document
    "How many puffs of the reliever inhaler?",
    "对乙酰氨基酚多久吃一次？",
]


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "发热.md").write_text(
        "三个月以下的婴儿发热应当立即就医。对乙酰氨基酚两次用药至少间隔4小时。", encoding="utf-8"
    )
    (folder / "warfarin.txt").write_text("For atrial fibrillation the target INR range is 2.0 to 3.0.")
    (folder / "asthma.txt").write_text("In the yellow zone take two to four puffs of the reliever inhaler.")
    return folder


@pytest.fixture
def questions(tmp_path) -> Path:
    path = tmp_path / "questions.txt"
    path.write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
    return path


def answers_flags(model: Path, questions: Path, out: Path, docs: Path) -> list[str]:
    return ["--base_model", str(model), "--template_name", "chatml", "--data_file", str(questions)] + [
        "--output_file", str(out), "--corpus_files", str(docs), "--temperature", "0", "--max_new_tokens", "6",
        "--batch_size", "2",
    ]  # fmt: skip


def test_grounded_batch_answers_carry_their_sources(tiny_model_dir, questions, docs, tmp_path):
    out = tmp_path / "answers.jsonl"
    chatpdf.main(answers_flags(tiny_model_dir, questions, out, docs))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["Input"] for row in rows] == QUESTIONS
    assert [row.get("sources", [{}])[0].get("file") for row in rows] == [
        "发热.md", "warfarin.txt", None, "asthma.txt", "发热.md"
    ]  # fmt: skip
    assert not (tmp_path / "answers.jsonl.partial").exists()


def test_the_engine_grounds_the_question_and_tells_when_nothing_matches(tiny_model_dir, docs):
    engine = ChatEngine.load(str(tiny_model_dir), template_name="chatml")
    engine.knowledge = KnowledgeBase([docs], None)
    engine.knowledge.update()
    grounded, passages = engine.ground([{"role": "user", "content": "婴儿发热要去医院吗？"}])
    assert passages[0].file == "发热.md" and "[1] (发热.md) 三个月以下的婴儿发热" in grounded[-1]["content"]
    grounded, passages = engine.ground([{"role": "user", "content": "带状疱疹会传染吗？"}])
    assert passages == [] and grounded[-1]["content"].startswith("文档中没有与这个问题相关的段落")
    reply = engine.reply([{"role": "user", "content": "What INR range on warfarin?"}], temperature=0, max_new_tokens=4)
    assert reply.sources[0]["source"] == "warfarin.txt" and reply.sources[0]["cited"] is False


def test_chatpdf_in_the_terminal_shows_sources(tiny_model_dir, docs, monkeypatch, capsys):
    said = iter(["What INR range on warfarin?", "带状疱疹会传染吗？", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(said))
    chatpdf.main(["--gen_model", str(tiny_model_dir), "--prompt_template_name", "chatml"]
                 + ["--corpus_files", str(docs), "--max_new_tokens", "4", "--temperature", "0"])  # fmt: skip
    shown = capsys.readouterr().out
    assert "Sources: [1] warfarin.txt" in shown and "(no passage of the documents matches this question)" in shown


def test_two_processes_write_what_one_process_writes(tiny_model_dir, questions, docs, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    inference.main(answers_flags(tiny_model_dir, questions, one, docs))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    result = subprocess.run(
        [*command, str(free_port()), "inference.py", *answers_flags(tiny_model_dir, questions, two, docs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert two.read_text(encoding="utf-8") == one.read_text(encoding="utf-8")


def test_a_stopped_run_answers_only_what_is_missing(tiny_model_dir, questions, tmp_path, monkeypatch):
    out = tmp_path / "answers.jsonl"
    partial = tmp_path / "answers.jsonl.partial"
    done = [{"id": f"prompt-{i:06d}", "Input": QUESTIONS[i], "Output": "earlier"} for i in (0, 1)]
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done) + '{"id": "prompt-0000')
    asked = []

    def batch(self, conversations, **sampling):
        asked.append([c[-1]["content"] for c in conversations])
        return [Reply(text="now") for _ in conversations]

    monkeypatch.setattr(ChatEngine, "batch", batch)
    inference.main(["--base_model", str(tiny_model_dir), "--template_name", "chatml", "--data_file", str(questions)]
                   + ["--output_file", str(out), "--eval_batch_size", "2"])  # fmt: skip
    assert asked == [QUESTIONS[2:4], QUESTIONS[4:]]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["Output"] for r in rows] == ["earlier", "earlier", "now", "now", "now"]
    assert [r["Input"] for r in rows] == QUESTIONS and "id" not in rows[0] and not partial.exists()
