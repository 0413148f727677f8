"""The demo summary: per stage the signal at start and end, held-out checks before and after with an honest verdict,
the perplexity table and the answers side by side, from the files run_pipeline.sh leaves."""

import json
from pathlib import Path

import pytest

from medgpt.errors import UserError
from tools import demo_summary


def write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    out = tmp_path / "demo"
    write(out / "stages.txt", "sft rm ppo\n")
    write(out / "timings.tsv", "eval-base\t30\nsft\t200\nrm\t100\nppo\t150\n")
    write(out / "eval" / "base.json", {"chat": {"perplexity": 9.5}, "mcq": {"accuracy": 0.3, "questions": 80}})
    sft = {"chat": {"perplexity": 6.25}, "mcq": {"accuracy": 0.35, "questions": 80}}
    write(out / "eval" / "sft.json", {**sft, "triage": {"recall": 0.5, "specificity": 0.75}})
    write(out / "eval" / "ppo-before.json", {"prompts": {"rewards": {"reward_model": {"mean": 0.5}}}})
    write(out / "eval" / "ppo.json", {"prompts": {"rewards": {"reward_model": {"mean": 0.25}}}})
    write(out / "eval" / "ppo-triage.json", {"triage": {"recall": 0.25, "specificity": 1.0}})
    write(out / "sft" / "trainer_state.json", {"log_history": [{"loss": 2.0}, {"loss": 1.5}, {"loss": 1.2}]})
    rm_log = [{"eval_accuracy": 0.5}, {"accuracy": 0.6}, {"accuracy": 0.9}]
    write(out / "rm" / "trainer_state.json", {"log_history": rm_log})
    write(out / "eval" / "rm.json", {"preference": {"kind": "reward model", "accuracy": 0.8, "margin": 1.5}})
    write(out / "ppo" / "trainer_state.json", {"log_history": [{"objective/scores": v} for v in (0.1, 0.2, 0.3, 0.4)]})
    write(out / "answers" / "base.jsonl", '{"Input": "What is a fever?", "Output": "A | high temperature."}\n')
    write(
        out / "answers" / "final.jsonl", '{"Input": "What is a fever?", "Output": "A body temperature above 38 °C."}\n'
    )
    write(out / "final_model.txt", "outputs/demo/merged-ppo\n")
    return out


def test_the_summary_reports_each_stage_and_says_when_one_did_not_learn(run_dir):
    text = demo_summary.main(["--demo_dir", str(run_dir)])
    assert (run_dir / "summary.md").read_text(encoding="utf-8") == text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "train loss: 2.000 → 1.200" in rows["| SFT"] and "chat perplexity: 9.500 → 6.250" in rows["| SFT"]
    assert rows["| SFT"].endswith("| yes | 200 s |")
    assert "pairwise accuracy: 0.500 → 0.800" in rows["| RM"] and "| yes |" in rows["| RM"]
    assert "RM score: 0.100 → 0.400" in rows["| PPO"]  # first vs last third of the logged scores
    assert "mean RM score: 0.500 → 0.250" in rows["| PPO"] and "no: mean RM score did not improve" in rows["| PPO"]
    assert "| base | 9.500 | 0.300 (80 questions) | not measured |" in text
    assert "| after SFT | 6.250 | 0.350 (80 questions) | 0.500 / 0.750 |" in text
    assert "| after PPO | not measured | not measured | 0.250 / 1.000 |" in text
    assert "| What is a fever? | A \\| high temperature. | A body temperature above 38 °C. |" in text
    assert "Whole run: 8 min 0 s" in text


def test_a_stage_without_figures_says_so(run_dir):
    (run_dir / "eval" / "sft.json").unlink()
    text = demo_summary.main(["--demo_dir", str(run_dir)])
    assert "chat perplexity: 9.500 → n/a" in text and "not measured (see the stage log)" in text


def test_a_folder_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="holds no run_pipeline.sh run"):
        demo_summary.main(["--demo_dir", str(tmp_path)])
