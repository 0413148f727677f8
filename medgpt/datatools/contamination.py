"""Evaluation items leaked into training data (tools/check_contamination.py).

An evaluation item's text is its question with its answer (medgpt.datatools.sources.parts; for multiple choice the
options and the letter). A training row leaks the item when most of that text's token bigrams (one token per CJK
character, per Latin word) occur in the row: the score is the share of the item's bigrams found in the training
row's questions and answers, each bigram weighted by its rarity among the evaluation texts (a phrase every
question uses proves nothing). Bigrams rather than long n-grams so that a reworded copy (a few words changed or
moved) still scores high, and question with answer rather than the question alone, since short questions on one
pattern ("X有什么症状？") share most of their bigrams without being the same item.
Items shorter than `min_tokens` are skipped. The bigrams must also be close together: the score is taken over the
best window of the training row about twice the item's length, so a long article that happens to use an item's
words here and there does not count as a copy of it.
"""

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from medgpt.datatools.sources import Row, ngrams, parts, tokens

NGRAM = 2


@dataclass
class Leak:
    train: Row
    item: Row
    score: float

    def to_json(self) -> dict:
        return {
            "train_file": str(self.train.path),
            "train_line": self.train.line,
            "eval_file": str(self.item.path),
            "eval_line": self.item.line,
            "overlap": round(self.score, 3),
        }


class EvalIndex:
    """Bigram -> the evaluation texts holding it, for one pass over the training rows."""

    def __init__(self, items: Iterable[Row], min_tokens: int) -> None:
        self.texts: list[tuple[Row, float]] = []  # (item, total weight of its bigrams)
        self.index: dict[str, list[int]] = defaultdict(list)
        self.grams_of: list[set[str]] = []
        for item in items:
            words = tokens("\n".join(parts(item)))
            if len(words) < min_tokens:
                continue
            grams = ngrams(words, NGRAM)
            for gram in grams:
                self.index[gram].append(len(self.texts))
            self.texts.append((item, 0.0))
            self.grams_of.append(grams)
        # A bigram shared by many evaluation texts ("what are", "有什么") says little about which item leaked.
        self.weight = {gram: math.log(1 + len(self.texts) / len(held)) for gram, held in self.index.items()}
        for i, grams in enumerate(self.grams_of):
            self.texts[i] = (self.texts[i][0], sum(self.weight[g] for g in grams))

    def leaks(self, row: Row, threshold: float) -> list[Leak]:
        """Every evaluation text whose bigram share in `row` is at least `threshold`, best first."""
        question, answer = parts(row)
        words = tokens(f"{question}\n{answer}")
        hits: dict[int, float] = defaultdict(float)
        for gram in ngrams(words, NGRAM):
            for text in self.index.get(gram, ()):
                hits[text] += self.weight[gram]
        sequence = [" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)] or [" ".join(words)]
        found = []
        for text, count in hits.items():
            item, total = self.texts[text]
            if count / total >= threshold:  # cheap bound first: the whole row holds enough of the item
                score = self.window_weight(sequence, self.grams_of[text]) / total
                if score >= threshold:
                    found.append(Leak(row, item, score))
        return sorted(found, key=lambda leak: (-leak.score, str(leak.item.path), leak.item.line))

    def window_weight(self, sequence: list[str], grams: set[str]) -> float:
        """Largest weight of distinct `grams` inside any window of `sequence` (the training row's bigrams in
        order) about twice as long as the item."""
        width = 2 * len(grams) + 8
        positions = [(i, gram) for i, gram in enumerate(sequence) if gram in grams]
        inside: Counter[str] = Counter()
        best = weight = 0.0
        start = 0
        for end, gram in positions:
            inside[gram] += 1
            weight += self.weight[gram] if inside[gram] == 1 else 0.0
            while positions[start][0] <= end - width:
                old = positions[start][1]
                inside[old] -= 1
                weight -= self.weight[old] if inside[old] == 0 else 0.0
                start += 1
            best = max(best, weight)
        return best


def find_leaks(index: EvalIndex, rows: Iterable[Row], threshold: float) -> Iterator[tuple[Row, list[Leak]]]:
    for row in rows:
        yield row, index.leaks(row, threshold)
