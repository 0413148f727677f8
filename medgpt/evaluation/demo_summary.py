"""The summary of a run_pipeline.sh run (its DEMO_OUTPUT folder): per stage the training signal at start and end, a
held-out check before and after, whether it shows learning, and its wall time; held-out perplexity and multiple-choice
accuracy per model; the base and final models' answers side by side. `tools/demo_summary.py` prints and saves it."""

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    """One figure compared before and after a stage; `higher` says which way is better."""

    label: str
    before: float | None
    after: float | None
    higher: bool

    def learned(self) -> bool | None:
        if self.before is None or self.after is None:
            return None
        return self.after > self.before if self.higher else self.after < self.before

    def text(self) -> str:
        return f"{self.label}: {_fmt(self.before)} → {_fmt(self.after)}"


# The models of the held-out table: eval/NAME.json (and eval/NAME-triage.json) as run_pipeline.sh writes them.
MODELS = (
    ("base", "base"),
    ("pt", "after PT"),
    ("sft", "after SFT"),
    ("ppo", "after PPO"),
    ("dpo", "after DPO"),
    ("grpo", "after GRPO"),
    ("orpo", "after ORPO"),
)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


# ---------------------------------------------------------------- reading a run


class Run:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stages = (folder / "stages.txt").read_text().split() if (folder / "stages.txt").is_file() else []
        self.seconds = {}
        self._evals: dict[str, dict] = {}
        if (folder / "timings.tsv").is_file():
            for line in (folder / "timings.tsv").read_text().splitlines():
                name, seconds = line.split("\t")
                self.seconds[name] = int(seconds)

    def eval(self, name: str) -> dict:
        if name not in self._evals:
            path = self.folder / "eval" / f"{name}.json"
            self._evals[name] = json.loads(path.read_text()) if path.is_file() else {}
        return self._evals[name]

    def log(self, stage: str) -> list[dict]:
        path = self.folder / stage / "trainer_state.json"
        return json.loads(path.read_text())["log_history"] if path.is_file() else []

    def trend(self, stage: str, key: str) -> tuple[float | None, float | None]:
        """Mean of the first and of the last third of the logged values (RL rewards are noisy step to step)."""
        values = [entry[key] for entry in self.log(stage) if key in entry and isinstance(entry[key], (int, float))]
        if not values:
            return None, None
        k = max(1, len(values) // 3)
        return sum(values[:k]) / k, sum(values[-k:]) / k

    def first_last(self, stage: str, key: str) -> tuple[float | None, float | None]:
        values = [entry[key] for entry in self.log(stage) if key in entry]
        return (values[0], values[-1]) if values else (None, None)


def _get(results: dict, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results if isinstance(results, (int, float)) else None


def _ppl(loss: float | None) -> float | None:
    return None if loss is None else math.exp(loss) if loss < 50 else float("inf")


# ---------------------------------------------------------------- what each stage shows

STAGE_DATA = {
    "pt": "data/pretrain (text)",
    "sft": "data/sft (chats)",
    "rm": "data/reward (pairs)",
    "ppo": "data/sft prompts + reward model",
    "dpo": "data/reward (pairs)",
    "grpo": "data/grpo (questions)",
    "orpo": "data/reward (pairs)",
}


def compare(run: Run, label: str, before: str, after: str, keys: tuple[str, ...], higher: bool) -> Check:
    """A figure of evaluate_model.py's JSON (`keys` into it) for the `before` and `after` evaluations."""
    return Check(label, _get(run.eval(before), *keys), _get(run.eval(after), *keys), higher)


def stage_checks(run: Run, stage: str) -> tuple[list[Check], list[Check]]:
    """(training signal, held-out checks) of one stage."""
    before_sft = "pt" if run.eval("pt") else "base"
    rewards = ("prompts", "rewards")
    if stage == "pt":
        return [Check("train loss", *run.first_last("pt", "loss"), higher=False)], [
            Check("text perplexity", *map(_ppl, run.first_last("pt", "eval_loss")), higher=False),
            compare(run, "chat perplexity", "base", "pt", ("chat", "perplexity"), higher=False),
        ]
    if stage == "sft":
        return [Check("train loss", *run.first_last("sft", "loss"), higher=False)], [
            compare(run, "chat perplexity", before_sft, "sft", ("chat", "perplexity"), higher=False),
            compare(run, "MCQ accuracy", before_sft, "sft", ("mcq", "accuracy"), higher=True),
        ]
    if stage == "rm":  # before: the trainer's evaluation at step 0 (random score head); after: evaluate_model.py
        after = _get(run.eval("rm"), "preference", "accuracy")
        return [Check("train accuracy", *run.trend("rm", "accuracy"), higher=True)], [
            Check("pairwise accuracy", run.first_last("rm", "eval_accuracy")[0], after, higher=True)
        ]
    if stage == "ppo":
        return [Check("RM score", *run.trend("ppo", "objective/scores"), higher=True)], [
            compare(run, "mean RM score", "ppo-before", "ppo", (*rewards, "reward_model", "mean"), higher=True)
        ]
    if stage == "dpo":  # the policy starts as the reference (the SFT model), so its margin over it starts at 0
        after = _get(run.eval("dpo"), "preference", "margin")
        return [Check("train margin", *run.trend("dpo", "rewards/margins"), higher=True)], [
            Check("DPO margin over SFT", None if after is None else 0.0, after, higher=True)
        ]
    if stage == "grpo":
        return [Check("mean reward", *run.trend("grpo", "reward"), higher=True)], [
            compare(run, f"mean {name}", "grpo-before", "grpo", (*rewards, name, "mean"), higher=True)
            for name in ("medical_accuracy", "choice_accuracy")
        ]
    return [Check("train loss", *run.first_last("orpo", "loss"), higher=False)], [
        compare(run, "log-prob margin", "orpo-before", "orpo", ("preference", "margin"), higher=True)
    ]


def verdict(checks: list[Check]) -> str:
    outcomes = [check.learned() for check in checks]
    if any(o is None for o in outcomes) or not outcomes:
        return "not measured (see the stage log)"
    if all(outcomes):
        return "yes"
    missed = ", ".join(c.label for c, o in zip(checks, outcomes, strict=True) if not o)
    if any(outcomes):
        return f"partly: {missed} did not improve at demo size"
    return f"no: {missed} did not improve at demo size (try DEMO_SCALE=4)"


# ---------------------------------------------------------------- the report


def answers(run: Run, name: str) -> list[dict]:
    path = run.folder / "answers" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def summary(run: Run) -> str:
    total = sum(run.seconds.values())
    lines = [
        "# Demo summary",
        "",
        f"Whole run: {total // 60} min {total % 60} s. Held-out data (data/eval) is never trained on. "
        "Before → after compares the model a stage starts from with the model it produces.",
        "",
        "## Stages",
        "",
        "| stage | trained on | training signal (start → end) | held-out check (before → after) | learned? | time |",
        "|---|---|---|---|---|---|",
    ]
    for stage in run.stages:
        signal, held_out = stage_checks(run, stage)
        lines.append(
            f"| {stage.upper()} | {STAGE_DATA[stage]} | {'; '.join(c.text() for c in signal)} | "
            f"{'; '.join(c.text() for c in held_out)} | {verdict(held_out)} | {run.seconds.get(stage, 0)} s |"
        )
    lines += [
        "",
        "## Held-out perplexity, multiple choice and triage",
        "",
        "Chat perplexity counts assistant tokens only (data/eval/sft). Multiple-choice accuracy picks the option "
        "with the highest length-normalised log-likelihood (data/eval/mcq). Triage: the share of red-flag "
        "prompts whose answer sends the patient to urgent care, and of ordinary ones whose answer does not "
        "(data/eval/triage).",
        "",
        "| model | chat perplexity | MCQ accuracy | triage recall / specificity |",
        "|---|---|---|---|",
    ]
    for name, label in MODELS:
        # RL stages check triage in a step of its own (their other checks answer only the first prompts)
        results = {**run.eval(f"{name}-triage"), **run.eval(name)}
        if not any(section in results for section in ("chat", "mcq", "triage")):
            continue
        questions = _get(results, "mcq", "questions")
        cells = {
            "chat": _fmt(_get(results, "chat", "perplexity")),
            "mcq": f"{_fmt(_get(results, 'mcq', 'accuracy'))} ({questions} questions)",
            "triage": f"{_fmt(_get(results, 'triage', 'recall'))} / {_fmt(_get(results, 'triage', 'specificity'))}",
        }
        shown = [cell if section in results else "not measured" for section, cell in cells.items()]
        lines.append(f"| {label} | {' | '.join(shown)} |")
    final = (run.folder / "final_model.txt").read_text().strip() if (run.folder / "final_model.txt").is_file() else ""
    lines += ["", f"## Answers: base model vs final model ({final or 'none'})", ""]
    lines += ["| question | base | final |", "|---|---|---|"]
    for before, after in zip(answers(run, "base"), answers(run, "final"), strict=False):
        lines.append(f"| {_cell(before['Input'])} | {_cell(before['Output'])} | {_cell(after['Output'])} |")
    pngs = sorted(str(p) for p in run.folder.glob("*/training_*.png"))
    lines += [
        "",
        "## Where to look",
        "",
        f"- Curves: {', '.join(pngs) if pngs else 'none written'}",
        f"- TensorBoard: `tensorboard --logdir {run.folder}`",
        f"- Each step's full log: {run.folder}/logs; held-out figures as JSON: {run.folder}/eval",
        "",
    ]
    return "\n".join(lines)
