"""tools/lm_eval_task.py: our multiple-choice questions as an lm-evaluation-harness task. Where the harness is
installed (make test installs lm-eval[hf]), it scores SmolLM2-135M-Instruct on data/eval/mcq and must pick, question by
question, what our summed log-likelihood picks."""

import json
from pathlib import Path

import pytest
import yaml

import evaluate_model
from medgpt.errors import UserError
from tools import lm_eval_task, prepare_model

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).parent / "fixtures" / "benchmarks"


def test_the_task_holds_each_question_with_its_prompt_choices_and_answer(tmp_path):
    folder = lm_eval_task.main(["--mcq_file", str(SAMPLES / "cmb"), "--output_dir", str(tmp_path / "task")])
    config = yaml.safe_load((folder / "medgpt_mcq.yaml").read_text(encoding="utf-8"))
    assert config["output_type"] == "multiple_choice" and config["doc_to_text"] == "prompt"
    documents = [
        json.loads(line) for line in Path(config["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()
    ]
    assert [d["labels"][d["label"]] for d in documents] == ["D", "ACD", "B"]
    assert documents[0]["choices"][documents[0]["label"]] == "心肌肌钙蛋白", "a single answer is its option text"
    assert len(documents[1]["choices"]) == 15 and documents[1]["prompt"].endswith(
        "（多选题：回答所有正确选项的字母。）"
    )


def test_what_a_harness_task_cannot_hold_is_refused(tmp_path):
    dev = str(SAMPLES / "ceval" / "dev")
    flags = ["--mcq_file", str(SAMPLES / "ceval" / "val"), "--output_dir", str(tmp_path / "t")]
    with pytest.raises(UserError, match="--num_fewshot"):
        lm_eval_task.main([*flags, "--mcq_dev_file", dev, "--num_fewshot", "1"])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        lm_eval_task.main(flags)
    assert (tmp_path / "t" / "notes.txt").read_text() == "mine", "nothing of the user's is removed"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    pytest.importorskip("lm_eval")
    try:
        return prepare_model.main(
            ["--output_dir", str(tmp_path_factory.mktemp("smollm2") / "m"), "--dtype", "float32"]
        )
    except UserError as err:  # the demo model package is missing
        pytest.skip(str(err))


def test_the_harness_picks_what_we_pick_on_smollm2(smollm2, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    mcq_file = str(ROOT / "data" / "eval" / "mcq")
    ours = evaluate_model.main(["--base_model", str(smollm2), "--mcq_file", mcq_file])["mcq"]
    folder = lm_eval_task.main(["--mcq_file", mcq_file, "--output_dir", str(tmp_path / "task")])
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={smollm2},dtype=float32,device=cpu",
        tasks=["medgpt_mcq"],
        task_manager=TaskManager(include_path=str(folder)),
        apply_chat_template=True,
        log_samples=True,
        batch_size=16,
    )
    samples = sorted(results["samples"]["medgpt_mcq"], key=lambda sample: sample["doc_id"])
    assert len(samples) == len(ours["predictions"]) == 80
    for sample, prediction in zip(samples, ours["predictions"], strict=True):
        labels = sample["doc"]["labels"]
        theirs = [loglik for loglik, _ in sample["filtered_resps"]]
        assert labels[max(range(len(theirs)), key=theirs.__getitem__)] == prediction["sum"], sample["doc_id"]
        # The harness also scores the "\n" after "assistant" (it moves trailing whitespace into the continuation):
        # the same for every option, so the options' differences must agree.
        mine = [prediction["logprobs"][label] for label in labels]
        assert [t - theirs[0] for t in theirs] == pytest.approx([m - mine[0] for m in mine], abs=5e-4)
    assert results["results"]["medgpt_mcq"]["acc,none"] == pytest.approx(ours["accuracy_sum"])
