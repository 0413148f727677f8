"""The `mcq` section's questions as an lm-evaluation-harness task (tools/lm_eval_task.py), so that the harness can
score the same questions with the same prompt and its figures can be set beside ours.

Each question becomes a document {"prompt": the user turn we score after, "choices": the answers we score, "label":
the right one}; the task takes the prompt verbatim (`doc_to_text`) and the harness, run with
`--apply_chat_template`, renders it with the model's own chat template, as `evaluate_model.py` does. The harness
then scores each choice's text alone, as our default does, and its `acc` is comparable with our `accuracy_sum`.
"""

import json
from pathlib import Path

from medgpt.atomic import staged_folder
from medgpt.errors import UserError
from medgpt.evaluation.mcq import candidates, question_turns, subject

TASK = """\
# Written by tools/lm_eval_task.py from {source}: the questions and prompts of evaluate_model.py's mcq section.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def harness_documents(rows: list[dict]) -> tuple[list[dict], str | None]:
    """(one document per question, the system prompt every question shares or None). The harness takes one user
    turn per document and one system prompt per run, so a question with earlier turns (few-shot examples, a chat
    history) or a system prompt of its own is refused."""
    documents, systems = [], set()
    for number, row in enumerate(rows, 1):
        turns = question_turns(row)
        if turns[0]["role"] == "system":
            systems.add(turns.pop(0)["content"])
        if len(turns) != 1 or row.get("fewshot") or row.get("tools"):
            raise UserError(
                f"question {number} has earlier turns, tools or few-shot examples: the harness task holds one user "
                "turn per question. Export zero-shot questions without tools (use the harness's own --num_fewshot)."
            )
        options = json.loads(row["options"]) if row["options"] else {}
        if not row["answer"] or not options:
            raise UserError(f"question {number} has no answer or no options to score.")
        labels = [label for label, _ in candidates(options, row["answer"])]
        answers = [turn["content"] for _, turn in candidates(options, row["answer"])]
        document = {"id": number, "prompt": turns[0]["content"], "choices": answers}
        documents.append({**document, "label": labels.index(row["answer"]), "labels": labels, "subject": subject(row)})
    if len(systems) > 1:
        raise UserError("the questions have different system prompts; the harness takes one (--system_instruction).")
    return documents, next(iter(systems), None)


def write_task(rows: list[dict], output_dir: str, task: str, source: str) -> tuple[Path, str | None]:
    """A folder for `lm_eval --include_path`: the task's YAML and its documents. Returns (folder, system prompt)."""
    documents, system = harness_documents(rows)
    out = Path(output_dir)
    with staged_folder(out) as staging:
        docs = staging / f"{task}.jsonl"
        docs.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in documents), encoding="utf-8")
        yaml = TASK.format(source=source, task=task, docs=json.dumps(str((out / docs.name).resolve())))
        (staging / f"{task}.yaml").write_text(yaml, encoding="utf-8")
    return out, system
