"""medgpt.evaluation.benchmarks: the benchmarks' own file layouts read into the `mcq` section, each with its answer
key, subjects and few-shot examples. The sample files under fixtures/benchmarks are the project's own rows written
in each benchmark's layout."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

import evaluate_model
from medgpt import evaluation
from medgpt.errors import UserError, run_cli
from medgpt.evaluation import mcq
from medgpt.evaluation.runner import EvalArguments
from medgpt.model import load_saved

SAMPLES = Path(__file__).parent / "fixtures" / "benchmarks"
# file -> (detected layout, answer key, subjects)
LAYOUTS = {
    "ceval/val/clinical_medicine_val.csv": ("ceval", ["B", "A", "C"], {"clinical_medicine"}),
    "cmmlu/test/anatomy.csv": ("cmmlu", ["B", "B", "A"], {"anatomy"}),
    "cmb/CMB-val-sample.json": ("cmb", ["D", "ACD", "B"], {"临床执业医师", "护士执业资格"}),
    "cmexam/cmexam_val_sample.csv": ("cmexam", ["B", "ABC"], {"心血管内科", "神经内科"}),
    "medqa/us_4_options_sample.jsonl": ("medqa", ["B", "C"], {"step1", "step2&3"}),
    "medqa/mcmle_5_options_sample.jsonl": ("medqa", ["B", "D"], {"儿科", "急诊"}),
    "medmcqa/release_dev_sample.json": ("medmcqa", ["B", "D", "A"], {"Pharmacology", "Physiology", "Pediatrics"}),
    "medmcqa/hub_validation_sample.jsonl": ("medmcqa", ["B", "A"], {"Pharmacology", "Pediatrics"}),
    "pubmedqa/ori_pqal_sample.json": ("pubmedqa", ["A", "B", "C"], {"pubmedqa"}),
    "pubmedqa/hub_pqa_labeled_sample.jsonl": ("pubmedqa", ["A"], {"pubmedqa"}),
}


def read(path, eval_args: EvalArguments | None = None, **flags) -> list[dict]:
    return mcq.read(mcq.MultipleChoiceArguments(mcq_file=str(path), **flags), eval_args or EvalArguments())


class Oracle:
    """A model whose answers are known: it gives each question's right answer log-prob 0 and every other answer -10
    per character (or the reverse), so any mix-up of letters, options and answer key shows in the accuracy."""

    def __init__(self, tokenizer, rows: list[dict], right: bool = True):
        self.tokenizer, self.right = tokenizer, right
        self.correct = [mcq.correct_answer(row) for row in rows]  # the groups come in row order

    def __call__(self, model, groups, pad_token_id, what="", progress=True):
        scores = []
        for group, correct in zip(groups, self.correct, strict=True):
            answers = [self.tokenizer.decode([t for t, keep in zip(*seq, strict=True) if keep]) for seq in group]
            assert correct in answers
            scores.append([(0.0 if (a == correct) == self.right else -10.0 * len(a), len(a)) for a in answers])
        return scores


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_is_read_with_its_answer_key_and_subjects(name):
    layout, answers, subjects = LAYOUTS[name]
    file = SAMPLES / name
    assert mcq.benchmarks.converted_rows(file, "auto", None, "mcq_file")[0] == layout
    rows = read(file)
    assert [row["answer"] for row in rows] == answers
    assert {mcq.subject(row) for row in rows} == subjects
    for row in rows:
        options = json.loads(row["options"])
        question = json.loads(row["prompt"])[-1]["content"]
        assert all(f"{letter}. {text}" in question for letter, text in options.items()), "the prompt lists them"
        assert json.loads(row["extra"])["benchmark"] == layout


@pytest.mark.parametrize("right", [True, False])
def test_a_model_whose_answers_are_known_scores_every_layout(tiny, right, monkeypatch):
    model, tokenizer, template = tiny
    rows = [row for name in LAYOUTS for row in read(SAMPLES / name)]
    monkeypatch.setattr(mcq, "shared_prompt_logprobs", Oracle(tokenizer, rows, right))
    result = mcq.mcq_accuracy(model, tokenizer, template, rows, progress=False)
    assert result["questions"] == len(rows) == 24 and result["skipped"] == {}
    assert result["accuracy"] == result["accuracy_sum"] == (1.0 if right else 0.0)
    several = [row for row in rows if len(row["answer"]) > 1]
    assert result["several_correct"]["questions"] == len(several) == 2
    assert set(result["by_subject"]) == set().union(*(subjects for _, _, subjects in LAYOUTS.values()))


def test_several_correct_letters_are_scored_as_one_set_of_letters(tiny, monkeypatch):
    model, tokenizer, template = tiny
    (row,) = [row for row in read(SAMPLES / "cmexam/cmexam_val_sample.csv") if row["answer"] == "ABC"]
    seen = []

    def record(model, groups, *args, **kwargs):
        seen.extend(groups)
        return [[(0.0, 1)] * len(group) for group in groups]

    monkeypatch.setattr(mcq, "shared_prompt_logprobs", record)
    mcq.mcq_accuracy(model, tokenizer, template, [row], progress=False)
    answers = [tokenizer.decode([t for t, keep in zip(*seq, strict=True) if keep]) for seq in seen[0]]
    assert len(answers) == 2**4 - 1 and answers[:5] == ["A", "B", "C", "D", "AB"] and answers[-1] == "ABCD"
    assert mcq.question_turns(row)[-1]["content"].endswith(mcq.MULTI_INSTRUCTION["zh"])


def test_medical_subjects_are_chosen_from_a_folder_of_files():
    rows = read(SAMPLES / "ceval" / "val", mcq_subjects="medical")
    assert {mcq.subject(row) for row in rows} == {"clinical_medicine"}
    assert len(read(SAMPLES / "ceval" / "val")) == 4
    both = read(SAMPLES / "cmmlu" / "test", mcq_subjects="anatomy,high_school_politics")
    assert {mcq.subject(row) for row in both} == {"anatomy", "high_school_politics"}
    with pytest.raises(UserError, match=r"--mcq_subjects surgery: no such subject.*clinical_medicine"):
        read(SAMPLES / "ceval" / "val", mcq_subjects="surgery")


def test_medmcqa_cop_counts_from_one_or_zero(tmp_path):
    only_middle = write_jsonl(
        tmp_path / "dev.json",
        [{"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": n} for n in (1, 2, 3)],
    )
    with pytest.raises(UserError, match="every `cop` is 1, 2 or 3.*--mcq_cop_base 0 or 1"):
        read(only_middle)
    assert [row["answer"] for row in read(only_middle, mcq_cop_base=1)] == ["A", "B", "C"]
    assert [row["answer"] for row in read(only_middle, mcq_cop_base=0)] == ["B", "C", "D"]
    assert [row["answer"] for row in read(SAMPLES / "medmcqa/hub_validation_sample.jsonl", mcq_cop_base=0)] == [
        "B",
        "A",
    ]


def test_fewshot_examples_come_from_the_dev_split_of_the_same_subject():
    dev = str(SAMPLES / "ceval" / "dev")
    rows = read(SAMPLES / "ceval" / "val", mcq_subjects="medical", mcq_dev_file=dev, num_fewshot=2)
    for row in rows:
        shots = json.loads(row["fewshot"])
        assert [turn["role"] for turn in shots] == ["user", "assistant"] * 2
        assert "收缩压" in shots[0]["content"] and shots[1]["content"] == "140", "the option text is the answer"
        assert shots[3]["content"] == "烂苹果味"
    # A subject the dev split lacks takes any dev examples; the question itself is never its own example.
    same = mcq.with_fewshot(rows[:1], rows, 5)
    assert len(json.loads(same[0]["fewshot"])) == 2 * (len(rows) - 1)


def test_evaluate_model_scores_a_benchmark_folder_few_shot_per_subject(tiny_model_dir, capsys):
    results = evaluate_model.main(
        [
            "--base_model", str(tiny_model_dir), "--template_name", "qwen",
            "--mcq_file", str(SAMPLES / "ceval"), "--mcq_format", "ceval", "--mcq_subjects", "medical",
            "--mcq_dev_file", str(SAMPLES / "ceval" / "dev"), "--num_fewshot", "1",
        ]
    )  # fmt: skip
    figures = results["mcq"]
    # The dev split is in the folder too: its two questions are scored, each with the other as its example.
    assert figures["questions"] == 5 and figures["num_fewshot"] == 1 and figures["fewshot_questions"] == 5
    assert set(figures["by_subject"]) == {"clinical_medicine"}
    assert 0.0 <= figures["accuracy"] <= 1.0
    assert "accuracy (length-normalised)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("c_val.csv", "id,question,A,B,C,D,answer\n0,Q1,a,b,c,d,A\n1,Q2,a,b,c,d,\n", r"c_val\.csv:3.*answer.*empty"),
        (
            "cmexam.csv",
            'Question,Options,Answer\n"Q","Either of\nA x\nB y",A\n',
            r"cmexam\.csv:2.*Options.*does not start with an option letter",
        ),
        (
            "pqa.jsonl",
            '{"question": "Q?", "final_decision": "yes"}\n{"question": "Q?", "final_decision": "perhaps"}\n',
            r"pqa\.jsonl:2.*final_decision.*not one of yes, no, maybe",
        ),
        (
            "mm.jsonl",
            '{"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4}\n'
            '{"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 7}\n',
            r"mm\.jsonl:2.*cop.*out of range",
        ),
        ("medqa.jsonl", '{"question": "Q", "options": {"A": "x"}, "answer_idx": "C"}\n', r"medqa\.jsonl:1.*answer"),
        ("bad.jsonl", '{"question": "Q", "options": ["a", "b"], "answer": "A"}\n{"question": \n', r"bad\.jsonl:2"),
        ("other.csv", "x,y\n1,2\n", r"cannot tell the layout.*--mcq_format"),
        ("empty.csv", "", r"no rows to read"),
    ],
)
def test_malformed_benchmark_rows_are_errors_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read(tmp_path / name)


def test_bad_flags_exit_2_naming_the_flag(tiny_model_dir, capsys):
    base = ["--base_model", str(tiny_model_dir), "--mcq_file", str(SAMPLES / "cmb")]
    for flags, message in [
        (["--num_fewshot", "2"], "--num_fewshot 2 needs --mcq_dev_file"),
        (["--mcq_cop_base", "2"], "--mcq_cop_base 2"),
        (["--mcq_format", "mmlu"], "--mcq_format"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda argv=[*base, *flags]: evaluate_model.main(argv))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_saved(str(tiny_model_dir), template_name="qwen", padding_side="right")


def test_project_rows_still_read_as_before():
    rows = evaluation.read_rows("data/eval/mcq", "prompt", "mcq_file", check=mcq.check_mcq_row)
    assert [row["answer"] for row in read("data/eval/mcq")] == [row["answer"] for row in rows]
