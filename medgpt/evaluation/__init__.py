"""Held-out evaluation of a saved model (a model folder, or a base model plus a LoRA adapter), in sections.

Each section runs only when its file flag is given (evaluate_model.py is the command line):
  chat        perplexity over assistant tokens (the tokens SFT trains: answers and their stop strings)
  mcq         multiple-choice accuracy: the option the model finds most likely as its answer (the project's rows or
              the benchmarks' own files, medgpt.evaluation.benchmarks)
  preference  chosen vs rejected: a reward model's scores, the DPO implicit reward against a reference model, or the
              plain log-prob margin
  prompts     answers generated with the chat engine, scored by reward functions (medgpt.rewards)
  triage      answers to red-flag and ordinary cases: sent to urgent care where needed, and only there
  judge       answers rated by a judge model against a rubric, and compared with another model's in both orders

A section is a module with its own flags, its computation and its headline (medgpt/evaluation/section.py); the
table in medgpt/evaluation/sections.py lists them, and the runner and the report know nothing about any one. Every
text is rendered with the model's own chat template and tokenized as in training, and files are read by the
project's readers, so a bad row is reported as file:line.

    from medgpt.engine import EngineArguments
    from medgpt.evaluation import arguments, evaluate, format_table
    results = evaluate(EngineArguments(base_model="merged-sft"), *arguments(chat_file="data/eval/sft"))
    print(format_table(results))  # results["chat"]["perplexity"], ...
"""

from medgpt.evaluation.chat import chat_perplexity
from medgpt.evaluation.loglik import answer_sequence, sequence_logprobs, shared_prompt_logprobs
from medgpt.evaluation.mcq import check_mcq_row, mcq_accuracy, option_answer
from medgpt.evaluation.preference import lm_preference, pair_figures, reward_model_preference
from medgpt.evaluation.prompts import prompt_rewards
from medgpt.evaluation.report import format_table, table_rows, write_json
from medgpt.evaluation.rows import read_rows
from medgpt.evaluation.runner import EvalArguments, arguments, evaluate, model_kind
from medgpt.evaluation.section import Context, Section
from medgpt.evaluation.sections import SECTIONS, register, section_arguments

__all__ = [
    "SECTIONS", "Context", "EvalArguments", "Section", "answer_sequence", "arguments", "chat_perplexity",
    "check_mcq_row", "evaluate", "format_table", "lm_preference", "mcq_accuracy", "model_kind", "option_answer",
    "pair_figures", "prompt_rewards", "read_rows", "register", "reward_model_preference", "section_arguments",
    "sequence_logprobs", "shared_prompt_logprobs", "table_rows", "write_json",
]  # fmt: skip
