"""Chat with any trained model: interactively in the terminal (streamed), or in batch from a file, optionally
grounded in a folder of documents (answers cite their passages; see docs/knowledge.md).

The chat format comes from the model folder (the template it was trained with) unless --template_name is given.

    python inference.py --base_model merged-sft --interactive              # 'clear' resets history, 'exit' quits
    python inference.py --base_model merged-pt --lora_model outputs-sft --interactive   # adapter, no merge needed
    python inference.py --base_model merged-sft --data_file questions.txt --output_file answers.jsonl
    python inference.py --base_model merged-sft --knowledge_dir guidelines/ --interactive
    # several processes (GPUs, or CPU processes with gloo), one output file in input order:
    torchrun --nproc_per_node 2 inference.py --base_model merged-sft --data_file q.txt --output_file a.jsonl
    # a teacher writing SFT data (offline distillation); rerun the same command to continue a stopped run:
    python inference.py --base_model teacher --data_file prompts.jsonl --output_file sft/teacher.jsonl \\
        --output_format sharegpt --system_prompt "你是一名医生。" --temperature 0

Batch output: --output_format medicalgpt writes MedicalGPT's {"Input", "Output"} rows; sharegpt and messages write
each conversation with its answer as a training row (ShareGPT or OpenAI; the system prompt kept) with an "id" per
prompt. Progress is kept in OUTPUT.partial, so a rerun of a stopped run answers only what is missing. Answers cut by
--max_new_tokens are left out of training rows (counted; raise it and rerun to fill them in). With a knowledge base
each row also lists its sources.
"""

from medgpt import args
from medgpt.engine import EngineArguments
from medgpt.errors import UserError, run_cli
from medgpt.inference import InferenceArguments, run
from medgpt.retrieval.knowledge import RetrievalArguments


def main(argv: list[str] | None = None):
    engine_args, inf_args, retrieval_args = args.parse((EngineArguments, InferenceArguments, RetrievalArguments), argv)
    if not inf_args.interactive and not inf_args.data_file:
        raise UserError("nothing to do: pass --interactive to chat, or --data_file FILE for batch answers.")
    return run(engine_args, inf_args, retrieval_args)


if __name__ == "__main__":
    run_cli(main)
