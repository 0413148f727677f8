"""The question as the model sees it with a knowledge base: the retrieved passages numbered, an instruction to
answer from them and cite them as [1], [2], and to say so when they do not cover the question. Chinese questions
get the Chinese wording."""

import re

from medgpt.retrieval.knowledge import Passage

CJK = re.compile(r"[\u3400-\u9fff]")
CITATION = re.compile(r"\[(\d{1,2})\]")

PROMPTS = {
    "en": {
        "found": (
            "Answer the question using only the numbered passages from the documents below. Cite each passage you "
            "use by its number in brackets, like [1]. If the passages do not contain the answer, say that the "
            "documents do not cover the question.\n\n{passages}\n\nQuestion: {question}"
        ),
        "none": (
            "No passage of the documents matches this question. Say that the documents do not cover it, and do not "
            "answer from memory.\n\nQuestion: {question}"
        ),
    },
    "zh": {
        "found": (
            "请只根据下面编号的文档段落回答问题，并用方括号中的编号注明所依据的段落，例如 [1]。"
            "如果这些段落中没有答案，请说明文档未涉及这个问题。\n\n{passages}\n\n问题：{question}"
        ),
        "none": "文档中没有与这个问题相关的段落。请说明文档未涉及这个问题，不要凭记忆回答。\n\n问题：{question}",
    },
}


def grounded_question(question: str, passages: list[Passage]) -> str:
    wording = PROMPTS["zh" if CJK.search(question) else "en"]
    if not passages:
        return wording["none"].format(question=question)
    listing = "\n\n".join(f"[{p.number}] ({p.source}) {p.text}" for p in passages)
    return wording["found"].format(passages=listing, question=question)


def cited(answer: str, passages: list[Passage]) -> list[dict]:
    """Each passage as a dict with `cited`: whether the answer refers to its number."""
    numbers = {int(n) for n in CITATION.findall(answer)}
    return [{**p.as_dict(), "cited": p.number in numbers} for p in passages]
