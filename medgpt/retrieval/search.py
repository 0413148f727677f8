"""Ranking passages for a question: BM25 over Chinese-aware tokens (jieba words, stemmed lower-case English words,
stop words removed; bm25s), optional dense search with a local sentence-transformers model, and reciprocal rank
fusion of the two.

Relevance for the "not covered" decision is `coverage`: the share of the question's IDF weight that a passage
matches. Unlike a raw BM25 score it lies in [0, 1] whatever the corpus size, and a question whose rare words occur
in no document scores low even when common words ("treatment", "治疗") match.
"""

import logging
import math
import re
from functools import cache

import numpy as np

CJK = re.compile(r"[\u3400-\u9fff]")
WORD = re.compile(r"[\w\u3400-\u9fff]", re.UNICODE)
# Words that ask rather than say what is asked about: left out like stop words, so that a passage answering
# "儿童发热怎么办？" is not marked down for lacking "怎么办".
QUESTION_WORDS = frozenset(
    "怎么办 怎么 怎样 如何 什么 哪些 哪个 为什么 为何 是否 请问 应该 应当 可以 能否 需要 吗 呢 么 多少 几 有没有 "
    "哪里 何时 什么样 要不要 该 会 能 要 还是 好 一下 情况 怎么回事 讲究 合适 "
    "please tell explain describe list someone anyone use using take get gets give good ok okay much many long "
    "often".split()
)
RRF_K = 60  # the constant of Cormack et al. (2009); ranks below ~k matter little


@cache
def _tools():
    import bm25s.stopwords
    import jieba
    import Stemmer

    jieba.setLogLevel(logging.WARNING)
    stop = set(bm25s.stopwords.STOPWORDS_EN_PLUS) | set(bm25s.stopwords.STOPWORDS_CHINESE)
    return jieba, Stemmer.Stemmer("english"), frozenset(stop | QUESTION_WORDS)


def tokens(text: str) -> list[str]:
    """Search tokens: jieba's words for Chinese, stemmed lower-case words for English, no stop words or punctuation."""
    jieba, stemmer, stop = _tools()
    out = []
    for word in jieba.lcut_for_search(text.lower()):
        word = word.strip()
        if not word or word in stop or not WORD.search(word):
            continue
        out.append(stemmer.stemWord(word) if word.isascii() else word)
    return out


class LexicalIndex:
    """BM25 over passages' tokens."""

    def __init__(self, passage_tokens: list[list[str]]) -> None:
        import bm25s

        self.size = len(passage_tokens)
        self.sets = [set(t) for t in passage_tokens]
        self.document_frequency: dict[str, int] = {}
        for token_set in self.sets:
            for token in token_set:
                self.document_frequency[token] = self.document_frequency.get(token, 0) + 1
        self.bm25 = bm25s.BM25()
        if self.size:
            self.bm25.index(passage_tokens, show_progress=False)

    def idf(self, token: str) -> float:
        df = self.document_frequency.get(token, 0)
        return math.log(1 + (self.size - df + 0.5) / (df + 0.5))

    def scores(self, query: list[str]) -> np.ndarray:
        """BM25 score of every passage, shape (passages,)."""
        known = [t for t in query if t in self.document_frequency]
        if not self.size or not known:
            return np.zeros(self.size)
        return np.asarray(self.bm25.get_scores(known), dtype=float)

    def coverage(self, query: list[str], passage: int) -> float:
        """Share of the query's IDF weight the passage contains, in [0, 1]."""
        unique = set(query)
        total = sum(self.idf(t) for t in unique)
        return sum(self.idf(t) for t in unique & self.sets[passage]) / total if total else 0.0


def ranking(scores: np.ndarray) -> list[int]:
    """Passage numbers by falling score, ties in passage order; passages scoring 0 are left out."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [int(i) for i in order if scores[i] > 0]


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[int]:
    """One ranking from several: each passage scores sum(1 / (k + rank)) over the rankings that hold it."""
    fused: dict[int, float] = {}
    for order in rankings:
        for rank, passage in enumerate(order, 1):
            fused[passage] = fused.get(passage, 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=lambda p: (-fused[p], p))


class DenseEncoder:
    """A local sentence-transformers model: unit-length embeddings, so a dot product is the cosine."""

    def __init__(self, folder: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = folder
        self.model = SentenceTransformer(folder, device="cpu", local_files_only=True)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, rows of length 1."""
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        return self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
