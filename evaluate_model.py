"""Evaluate a trained model on held-out files: chat perplexity, multiple-choice accuracy, preference accuracy and
margin, and the mean rewards of generated answers. Each section runs when its file flag is given (a file or a folder
of .jsonl/.json files); the figures are printed as a table and, with --output_file, written to JSON.

The model is a saved folder, or a base model plus a LoRA adapter; texts are rendered with the chat template it was
trained with (see docs/evaluation.md for every figure and the file formats).

    python evaluate_model.py --base_model merged-sft --chat_file data/eval/sft --mcq_file data/eval/mcq \
        --output_file outputs/eval-sft.json
    python evaluate_model.py --base_model merged-pt --lora_model outputs-sft --chat_file data/eval/sft  # no merge
    python evaluate_model.py --base_model merged-dpo --reference_model merged-sft --preference_file data/eval/reward
    python evaluate_model.py --base_model merged-rm --preference_file data/eval/reward          # a reward model
    python evaluate_model.py --base_model merged-grpo --prompt_file data/eval/grpo \
        --reward_funcs medical_accuracy choice_accuracy --max_new_tokens 128
    python evaluate_model.py --base_model merged-sft --mcq_file ceval-exam/val --mcq_subjects medical \
        --mcq_dev_file ceval-exam/dev --num_fewshot 5          # a benchmark's own files, 5-shot, per subject
    python evaluate_model.py --base_model merged-sft --triage_file data/eval/triage   # red flags sent to urgent care
    export JUDGE_API_KEY=sk-...                                  # a judge model at any OpenAI-compatible endpoint
    python evaluate_model.py --base_model merged-dpo --judge_file data/eval/grpo --judge_against eval-sft.json \
        --judge_base_url https://api.openai.com/v1 --judge_model gpt-4o-mini
    python evaluate_model.py --config eval.yaml --max_samples 50    # CLI flags override the file
"""

import sys

from medgpt import args, evaluation
from medgpt.engine import EngineArguments
from medgpt.errors import run_cli

DEFAULTS: dict = {"reward_funcs": ["medical_accuracy", "choice_accuracy"]}


def main(argv: list[str] | None = None) -> dict:
    # The sections' flags are read from the table now, so a section registered before main() has its flags.
    engine_args, eval_args, *section_args = args.parse(
        (EngineArguments, evaluation.EvalArguments, *evaluation.section_arguments()), argv, DEFAULTS
    )
    results = evaluation.evaluate(engine_args, eval_args, *section_args)
    print(evaluation.format_table(results))
    for failure in results.get("judge_model", {}).get("failed", [])[:5]:
        print(f"judge request failed after its retries (left out; a rerun asks it again): {failure}", file=sys.stderr)
    if eval_args.output_file:
        print(f"wrote {evaluation.write_json(eval_args.output_file, results)}")
    return results


if __name__ == "__main__":
    run_cli(main)
