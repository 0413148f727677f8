"""Write evaluate_model.py's multiple-choice questions as an lm-evaluation-harness task, to score the same file with
the harness and compare its figures with ours (docs/evaluation.md, "Cross-checking with lm-evaluation-harness").

    python tools/lm_eval_task.py --mcq_file data/eval/mcq --output_dir outputs/lm_eval_task
    lm_eval run --model hf --model_args pretrained=merged-sft,dtype=float32 --tasks medgpt_mcq \\
        --include_path outputs/lm_eval_task --apply_chat_template --log_samples --output_path outputs/lm_eval

--mcq_file takes what evaluate_model.py takes (the project's rows or a benchmark's own files, --mcq_format,
--mcq_subjects, --mcq_cop_base). The harness's `acc` is comparable with our `accuracy_sum`: each choice's text
scored alone after the question rendered with the model's chat template (install the harness with
`pip install "lm-eval[hf]"`; make test does).
"""

from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.errors import UserError, run_cli
from medgpt.evaluation import mcq
from medgpt.evaluation.harness import write_task
from medgpt.evaluation.runner import EvalArguments


@dataclass
class HarnessTaskArguments:
    output_dir: str = field(metadata={"help": "Folder for the task (YAML + documents); pass it to --include_path."})
    task_name: str = field(default="medgpt_mcq", metadata={"help": "The task's name for lm_eval --tasks."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an --output_dir that holds other files."})


def main(argv: list[str] | None = None) -> Path:
    task_args, mcq_args = args.parse((HarnessTaskArguments, mcq.MultipleChoiceArguments), argv)
    if not mcq_args.mcq_file:
        raise UserError("--mcq_file is required: the multiple-choice file or folder to write as a harness task.")
    if mcq_args.num_fewshot or mcq_args.mcq_with_stop_token:
        raise UserError(
            "--num_fewshot and --mcq_with_stop_token cannot be written into a harness task: export zero-shot and "
            "give the harness its own --num_fewshot."
        )
    if not task_args.task_name.replace("_", "").isalnum():
        raise UserError(f"--task_name {task_args.task_name!r}: use letters, digits and underscores.")
    out = Path(task_args.output_dir)
    ours = {f"{task_args.task_name}.yaml", f"{task_args.task_name}.jsonl"}
    if out.is_dir() and not task_args.overwrite and {p.name for p in out.iterdir()} - ours:
        raise UserError(f"--output_dir {out} holds other files; give a new folder or --overwrite True.")
    rows = mcq.read(mcq_args, EvalArguments())
    folder, system = write_task(rows, str(out), task_args.task_name, mcq_args.mcq_file)
    print(f"wrote {len(rows)} questions as the lm-evaluation-harness task {task_args.task_name!r} to {folder}")
    system_flag = f" --system_instruction {system!r}" if system else ""
    print(
        f"score them: lm_eval run --model hf --model_args pretrained=MODEL --tasks {task_args.task_name} "
        f"--include_path {folder} --apply_chat_template{system_flag} --log_samples --output_path OUT"
    )
    return folder


if __name__ == "__main__":
    run_cli(main)
