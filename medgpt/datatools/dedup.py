"""Exact and near-duplicate rows within and across data files (tools/dedup.py).

A row's text is its questions and answers (with tool calls and tool results; without system prompts, which many
rows share). Exact duplicates have the same words once case, spacing and punctuation are ignored; near duplicates
have an estimated Jaccard similarity of their token 3-gram sets (one token per CJK character, per Latin word) of at
least `threshold`, found with MinHash and LSH (datasketch). Files are read in order and the first occurrence is
kept, so the result is deterministic.
"""

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from medgpt.datatools.sources import Row, ngrams, parts, tokens

NUM_PERM = 128
SHINGLE = 3
BATCH = 2048  # rows hashed together: MinHash.bulk works on numpy arrays, much faster than row by row


@dataclass
class Duplicate:
    row: Row
    of: Row
    how: str  # "exact" or "near"
    similarity: float

    def to_json(self) -> dict:
        return {
            "file": str(self.row.path),
            "line": self.row.line,
            "duplicate": self.how,
            "similarity": round(self.similarity, 3),
            "of_file": str(self.of.path),
            "of_line": self.of.line,
        }


def row_text(row: Row) -> str:
    if row.kind != "chat":
        question, answer = parts(row)
        return f"{question}\n{answer}"
    texts = []
    for message in json.loads(row.row["messages"]):
        if message["role"] != "system":
            texts.append(message.get("content") or "")
            texts += [json.dumps(call, ensure_ascii=False) for call in message.get("tool_calls") or ()]
    return "\n".join(texts)


def _batches(rows: Iterable[Row]) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def find_duplicates(rows: Iterable[Row], threshold: float) -> Iterator[tuple[Row, Duplicate | None]]:
    """Every row with the earlier row it duplicates, or None when it is kept."""
    exact: dict[bytes, Row] = {}
    # LSH only proposes candidates, each verified by its estimated similarity, so the bands are tuned for recall:
    # a pair at the threshold is proposed with probability 0.98 or more. At 1 only exact copies count.
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=(0.02, 0.98)) if threshold < 1 else None
    kept: list[tuple[Row, MinHash]] = []
    for batch in _batches(rows):
        words = [tokens(row_text(row)) for row in batch]
        shingles = [[s.encode("utf-8") for s in sorted(ngrams(w, SHINGLE))] for w in words]
        hashes = MinHash.bulk(shingles, num_perm=NUM_PERM, seed=1)
        for row, row_words, minhash in zip(batch, words, hashes, strict=True):
            key = hashlib.blake2b(" ".join(row_words).encode("utf-8"), digest_size=16).digest()
            if key in exact:
                yield row, Duplicate(row, exact[key], "exact", 1.0)
                continue
            candidates = sorted(int(index) for index in lsh.query(minhash)) if lsh else []
            scored = [(kept[i][1].jaccard(minhash), -i) for i in candidates]
            best = max(scored, default=(0.0, 0))
            if best[0] >= threshold:
                yield row, Duplicate(row, kept[-best[1]][0], "near", float(best[0]))
                continue
            exact[key] = row
            if lsh:
                lsh.insert(str(len(kept)), minhash)
            kept.append((row, minhash))
            yield row, None


def similarity(a: str, b: str) -> float:
    """Exact Jaccard similarity of two texts' 3-gram sets (what MinHash estimates); for reports and tests."""
    x, y = ngrams(tokens(a), SHINGLE), ngrams(tokens(b), SHINGLE)
    return len(x & y) / len(x | y) if x | y else 1.0
