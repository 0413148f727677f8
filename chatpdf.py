"""Ask questions of a folder of documents (guidelines, drug leaflets, protocols): each answer is grounded in the
passages found for it, cites them as [1], [2], and says so when the documents do not cover the question.

Documents: .txt, .md, .pdf (pages kept), .docx and JSON lines (MedicalGPT's {"问", "答"} corpus too). The index is
kept in <folder>/.medgpt_index and only new or changed files are read again. Details: docs/knowledge.md.

    python chatpdf.py --base_model merged-sft --corpus_files guidelines/                  # chat in the terminal
    python chatpdf.py --base_model merged-sft --corpus_files guidelines/ \\
        --data_file questions.txt --output_file answers.jsonl                             # rows carry their sources
    python chatpdf.py --base_model merged-sft --corpus_files a.pdf,b.docx --sim_model bge-small-zh/   # hybrid search
"""

from medgpt import args
from medgpt.engine import EngineArguments
from medgpt.errors import UserError, run_cli
from medgpt.inference import InferenceArguments, run
from medgpt.retrieval.knowledge import RetrievalArguments


def main(argv: list[str] | None = None):
    engine_args, inf_args, retrieval_args = args.parse((EngineArguments, InferenceArguments, RetrievalArguments), argv)
    if not retrieval_args.knowledge_dir:
        raise UserError("--corpus_files (or --knowledge_dir) is required: the folder or files of your documents.")
    return run(engine_args, inf_args, retrieval_args)


if __name__ == "__main__":
    run_cli(main)
