"""Splitting document units into overlapping passages on sentence boundaries, Chinese punctuation included.

A passage holds whole sentences up to `chunk_size` characters (a longer sentence is cut at commas, else at
`chunk_size`); the next passage starts with the previous one's last sentences that fit in `chunk_overlap`
characters, or with its last `chunk_overlap` characters when no whole sentence fits, so an answer spanning a
boundary is found from either side.
"""

import re

# A sentence ends at 。！？；!?; (with closing quotes or brackets), at a full stop followed by a space, or at a
# line break.
SENTENCE_END = re.compile(r"(?<=[。！？；!?;…])[”’」』）)\]]*|(?<=[.])(?=\s)|\n+")
CLAUSE_END = re.compile(r"(?<=[，,、：])")


def sentences(text: str) -> list[str]:
    pieces, start = [], 0
    for match in SENTENCE_END.finditer(text):
        end = match.end()
        if end > start:
            pieces.append(text[start:end])
            start = end
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def _fit(sentence: str, size: int) -> list[str]:
    """A sentence cut into pieces of at most `size` characters, at clause ends where there are any."""
    if len(sentence) <= size:
        return [sentence]
    out, current = [], ""
    for clause in (c for c in CLAUSE_END.split(sentence) if c):
        while len(clause) > size:
            if current:
                out.append(current)
                current = ""
            out.append(clause[:size])
            clause = clause[size:]
        if len(current) + len(clause) > size:
            out.append(current)
            current = ""
        current += clause
    return [*out, current] if current else out


def _joined(parts: list[str]) -> str:
    """Sentences joined: no space between Chinese sentences, one between others."""
    text = ""
    for part in parts:
        if text and not ("\u3000" <= text[-1] <= "\u9fff" or "\u3000" <= part[0] <= "\u9fff"):
            text += " "
        text += part
    return text


def chunks(text: str, chunk_size: int, chunk_overlap: int) -> list[str]:
    """Passages of `text` (see the module docstring). chunk_overlap < chunk_size."""
    pieces = [piece for sentence in sentences(text) for piece in _fit(sentence, chunk_size)]
    out: list[str] = []
    current: list[str] = []
    fresh = False  # does `current` hold a sentence not yet in any passage?
    for piece in pieces:
        if current and len(_joined([*current, piece])) > chunk_size:
            out.append(_joined(current))
            current = _overlap(current, chunk_overlap)
            while current and len(_joined([*current, piece])) > chunk_size:
                current = current[1:]
            fresh = False
        current.append(piece)
        fresh = True
    if current and fresh:
        out.append(_joined(current))
    return out


def _overlap(passage: list[str], chunk_overlap: int) -> list[str]:
    if chunk_overlap <= 0:
        return []
    kept: list[str] = []
    for sentence in reversed(passage):
        if len(_joined([sentence, *kept])) > chunk_overlap:
            break
        kept.insert(0, sentence)
    if kept:
        return kept
    last = passage[-1]
    tail = last[-chunk_overlap:]
    if last[-chunk_overlap - 1].isalnum() and " " in tail:  # do not start inside a Latin word
        tail = tail.split(" ", 1)[1]
    return [tail]
