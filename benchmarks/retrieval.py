"""Retrieval quality of the knowledge base on the project's own documents and questions: recall@k of the passage
holding the answer (Chinese and English), and how the relevance threshold separates questions the documents
answer from those they do not ("not covered").

    python benchmarks/retrieval.py                                   # BM25 alone
    python benchmarks/retrieval.py --sim_model path/to/bge-small-zh  # and hybrid (BM25 + dense, fused)

Documents: data/knowledge/ (9 files: Chinese and English, Markdown, text, JSON lines). Questions:
data/eval/knowledge/questions.jsonl: each names the file that answers it and a phrase the passage must hold
(none: any passage of that file), or no file (the documents do not cover it).
"""

import argparse
import json
import tempfile
from pathlib import Path

from medgpt.retrieval import search
from medgpt.retrieval.knowledge import KnowledgeBase

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def hit(passage, question: dict) -> bool:
    return passage.file == question["file"] and (not question["evidence"] or question["evidence"] in passage.text)


def measure(kb: KnowledgeBase, questions: list[dict], k: int, label: str) -> None:
    answerable = [q for q in questions if q["file"]]
    uncovered = [q for q in questions if not q["file"]]
    ranked = {}
    for q in questions:  # ranking alone: every passage counts as relevant
        kb.min_coverage, kb.min_similarity = 0.0, -1.0
        ranked[q["question"]] = kb.search(q["question"], top_k=k)
    for language in ("zh", "en"):
        subset = [q for q in answerable if bool(search.CJK.search(q["question"])) == (language == "zh")]
        found = sum(any(hit(p, q) for p in ranked[q["question"]]) for q in subset)
        print(f"{label:8} recall@{k} {language}: {found}/{len(subset)} = {found / len(subset):.3f}")
    print(f"{label:8} threshold   answerable kept with the answer   not-covered recognised")
    for threshold in THRESHOLDS:
        kb.min_coverage, kb.min_similarity = threshold, 2.0  # the lexical threshold alone decides
        kept = sum(any(hit(p, q) for p in kb.search(q["question"], top_k=k)) for q in answerable)
        refused = sum(not kb.search(q["question"], top_k=k) for q in uncovered)
        print(
            f"{label:8} {threshold:9.2f}   {kept:2d}/{len(answerable)} = {kept / len(answerable):.3f}"
            f"                  {refused:2d}/{len(uncovered)} = {refused / len(uncovered):.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim_model", help="local sentence-transformers folder for the hybrid run")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--documents", default=str(ROOT / "data" / "knowledge"))
    parser.add_argument("--questions", default=str(ROOT / "data" / "eval" / "knowledge" / "questions.jsonl"))
    options = parser.parse_args(argv)
    questions = [json.loads(line) for line in Path(options.questions).read_text(encoding="utf-8").splitlines()]
    print(f"{len(questions)} questions ({sum(1 for q in questions if not q['file'])} not covered by the documents)")
    with tempfile.TemporaryDirectory() as index:
        kb = KnowledgeBase([Path(options.documents)], Path(index) / "bm25")
        print(kb.update())
        measure(kb, questions, options.k, "bm25")
        if options.sim_model:
            hybrid = KnowledgeBase(
                [Path(options.documents)], Path(index) / "hybrid", encoder=search.DenseEncoder(options.sim_model)
            )
            hybrid.update()
            measure(hybrid, questions, options.k, "hybrid")
        else:
            print("hybrid   not run: give --sim_model (a local sentence-transformers folder)")


if __name__ == "__main__":
    main()
