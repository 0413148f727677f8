"""Statistics of data files for tools/validate_jsonl.py: rows, turns, languages, lengths and what a length limit cuts.

Lengths are in tokens when a tokenizer is given, else in characters. With a chat template, chat rows are rendered
and cut exactly as supervised_finetuning.py does (medgpt.tokenization.encode_chat): `cut` rows lose turns or the
end of an answer, `dropped` rows have no answer token left. Other kinds, or no template, count the question and
answer texts alone.
"""

import json
from collections import Counter
from dataclasses import dataclass, field

from medgpt.datatools.sources import CJK, Row, parts
from medgpt.tokenization import encode_chat, encode_segments

PERCENTILES = (50, 90, 99, 100)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles (p100 = the maximum)."""
    if not values:
        return {}
    ordered = sorted(values)
    return {f"p{p}": ordered[max(0, -(-p * len(ordered) // 100) - 1)] for p in PERCENTILES}


@dataclass
class Statistics:
    tokenizer: object = None
    template: object = None
    max_length: int | None = None
    rows: Counter = field(default_factory=Counter)  # per kind
    turns: int = 0
    cjk: int = 0
    letters: int = 0
    question_lengths: list[int] = field(default_factory=list)
    answer_lengths: list[int] = field(default_factory=list)
    text_lengths: list[int] = field(default_factory=list)  # PT documents
    cut: int = 0
    dropped: int = 0
    empty_answers: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # answer text -> first row holding it
    duplicate_answers: list[tuple[str, str]] = field(default_factory=list)
    tool_rows: int = 0

    def length(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def add(self, row: Row) -> None:
        self.rows[row.kind] += 1
        question, answer = parts(row)
        text = question + answer
        self.cjk += len(CJK.findall(text))
        self.letters += sum(1 for c in text if c.isalpha())
        if row.kind == "chat":
            messages = json.loads(row.row["messages"])
            self.turns += sum(m["role"] == "assistant" for m in messages)
            self.tool_rows += bool(row.row["tools"]) or any(m.get("tool_calls") for m in messages)
            replies = [m for m in messages if m["role"] == "assistant" and not m.get("tool_calls")]
        else:
            self.turns += row.kind != "text"
            self.tool_rows += bool(row.row.get("tools"))
            replies = [json.loads(row.row["chosen"])] if row.kind == "preference" else []
        # Per answer, for chats and pairs only: prompt references ("A", "Yes") repeat by nature.
        for reply in replies:
            text = (reply.get("content") or "").strip()
            if not text and not reply.get("tool_calls"):
                self.empty_answers.append(row.where)
            elif text:
                first = self.answers.setdefault(text, row.where)
                if first != row.where:
                    self.duplicate_answers.append((row.where, first))
        self._lengths(row, question, answer)

    def _lengths(self, row: Row, question: str, answer: str) -> None:
        if row.kind == "chat" and self.template is not None and self.tokenizer is not None:
            messages = json.loads(row.row["messages"])
            tools = json.loads(row.row["tools"]) if row.row["tools"] else None
            ids, supervised, _ = encode_segments(self.tokenizer, self.template.segments(messages, tools))
            self.question_lengths.append(len(ids) - sum(supervised))
            self.answer_lengths.append(sum(supervised))
            if self.max_length and len(ids) > self.max_length:
                kept, _ = encode_chat(self.tokenizer, self.template, messages, tools, self.max_length)
                self.dropped += not kept
                self.cut += bool(kept)
            return
        q, a = self.length(question), self.length(answer)
        if row.kind == "text":
            self.text_lengths.append(a)
        else:
            self.question_lengths.append(q)
            self.answer_lengths.append(a)
        if self.max_length and q + a > self.max_length:
            self.dropped += q >= self.max_length and row.kind != "text"
            self.cut += q < self.max_length or row.kind == "text"

    def to_json(self) -> dict:
        unit = "tokens" if self.tokenizer is not None else "characters"
        report = {
            "rows": dict(self.rows),
            "turns": self.turns,
            "cjk_share": round(self.cjk / self.letters, 3) if self.letters else 0.0,
            f"question_{unit}": percentiles(self.question_lengths),
            f"answer_{unit}": percentiles(self.answer_lengths),
            f"text_{unit}": percentiles(self.text_lengths),
            "empty_answers": len(self.empty_answers),
            "duplicate_answers": len(self.duplicate_answers),
            "tool_call_rows": self.tool_rows,
        }
        if self.max_length:
            exact = self.template is not None and self.tokenizer is not None
            report["max_length"] = {
                "limit": self.max_length,
                "cut": self.cut,
                "dropped": self.dropped,
                "counted": "as training renders chats" if exact else f"question + answer {unit}, no chat template",
            }
        return report
