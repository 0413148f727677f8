"""Row formats: every supported shape of a training row, validated and turned into one normalized shape.

A problem raises RowError naming the field; the reader (medgpt.data) adds file and line. Chat rows become
`messages` (a JSON list of {"role", "content"[, "tool_calls"]}) and `tools` (a JSON list or "").

Chat formats, detected from the keys of each row:
  sharegpt  {"conversations": [{"from": "human|gpt|system|function_call|observation", "value": ...}], "tools"?}
  alpaca    {"instruction", "input"?, "output", "history"?: [[q, a], ...], "system"?}
  openai    {"messages": [{"role": "system|user|assistant|tool", "content", "tool_calls"?}], "tools"?}
Preference formats (a prompt and two answers, chosen and rejected):
  medicalgpt  {"conversations": [prompt turns], "chosen": str, "rejected": str, "tools"?}
  legacy      {"question", "response_chosen", "response_rejected", "history"?, "system"?}
  trl         {"prompt"?: str | messages, "chosen": str | messages, "rejected": str | messages}
Pre-training: a line of a `.txt` file, or {"text": ...}.
Prompts (RL stages and batch inference): any chat row (the final answer becomes the reference), {"question",
"answer"}, multiple choice {"question", "options", "answer"}, or {"prompt", "answer"?}; see normalize_prompt_row.
"""

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
}
OPENAI_ROLES = {"system", "user", "assistant", "tool", "function"}


class RowError(Exception):
    """A problem with one row; the reader adds file and line."""

    def __init__(self, field_name: str | None, message: str):
        super().__init__(f"field {field_name!r}: {message}" if field_name else message)


@dataclass
class ReadReport:
    """What reading skipped or repaired; logged as one summary."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    example_limit: int = 3  # tools/validate_jsonl.py keeps every problem

    def to_json(self) -> dict:
        return {"rows": self.rows, "skipped": self.skipped, "notes": self.notes, "examples": self.examples}

    @classmethod
    def from_json(cls, record: dict) -> "ReadReport":
        return cls(record["rows"], Counter(record["skipped"]), Counter(record["notes"]), record["examples"])

    def log(self, what: str) -> None:
        skipped = sum(self.skipped.values())
        logger.info("%s: %d rows read, %d skipped", what, self.rows, skipped)
        for reason, count in self.skipped.items():
            logger.warning("  skipped %d rows: %s", count, reason)
        for note, count in self.notes.items():
            logger.info("  %d rows: %s", count, note)
        for example in self.examples:
            logger.warning("  e.g. %s", example)


# ---------------------------------------------------------------- chat formats -> normalized messages


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RowError(where, f"expected a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _tool_call(value: Any, where: str) -> dict:
    """A ShareGPT function_call value or an OpenAI tool_call -> {"type": "function", "function": {name, arguments}}."""
    call = value
    if isinstance(call, str):
        try:
            call = json.loads(call)
        except json.JSONDecodeError as err:
            raise RowError(where, f"tool call is not valid JSON ({err.msg}): {value[:60]!r}") from None
    if isinstance(call, dict) and "function" in call:
        call = call["function"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise RowError(where, 'a tool call needs {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise RowError(where, f"tool call arguments are not valid JSON ({err.msg})") from None
    return {"type": "function", "function": {"name": call["name"], "arguments": arguments}}


def _tools(value: Any) -> list:
    if value in (None, "", []):
        return []
    tools = value
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            raise RowError("tools", f"not valid JSON ({err.msg})") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowError("tools", "expected a list of tool definitions (objects)")
    for i, tool in enumerate(tools):
        spec = tool.get("function", tool)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise RowError(f"tools[{i}]", 'a tool needs {"name": ..., "description": ..., "parameters": {...}}')
        if not isinstance(spec.get("description") or "", str):
            raise RowError(f"tools[{i}].description", "expected a string")
    return tools


def from_sharegpt(row: dict) -> tuple[list[dict], list]:
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise RowError("conversations", "expected a list of {from, value} turns")
    messages = []
    system = row.get("system_prompt") or row.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system, "system_prompt")})
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError(where, 'each turn needs "from" and "value"')
        role = SHAREGPT_ROLES.get(_text(turn["from"], f"{where}.from"))
        if role is None:
            raise RowError(
                f"{where}.from", f"unknown role {turn['from']!r}; use one of {', '.join(sorted(SHAREGPT_ROLES))}"
            )
        if role == "system" and i == 0 and messages:
            messages[0] = {"role": "system", "content": _text(turn["value"], f"{where}.value")}  # turn wins
        elif role == "function_call":
            call = _tool_call(turn["value"], f"{where}.value")
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)  # parallel calls in a row belong to one assistant turn
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            messages.append({"role": role, "content": _text(turn["value"], f"{where}.value")})
    return messages, _tools(row.get("tools"))


def from_alpaca(row: dict) -> tuple[list[dict], list]:
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": _text(row["system"], "system")})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("history", "expected a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowError(f"history[{i}]", "expected a [question, answer] pair")
        messages.append({"role": "user", "content": _text(pair[0], f"history[{i}][0]")})
        messages.append({"role": "assistant", "content": _text(pair[1], f"history[{i}][1]")})
    query = _text(row["instruction"], "instruction")
    if row.get("input"):
        query = f"{query}\n{_text(row['input'], 'input')}"
    if "output" not in row:
        raise RowError("output", "missing; alpaca rows need instruction and output")
    messages.append({"role": "user", "content": query})
    messages.append({"role": "assistant", "content": _text(row["output"], "output")})
    return messages, []


def _openai_message(message: Any, where: str) -> dict:
    """One OpenAI-style message -> {"role", "content"[, "tool_calls"]}."""
    if not isinstance(message, dict) or "role" not in message:
        raise RowError(where, 'each message needs "role" and "content"')
    role = _text(message["role"], f"{where}.role")
    role = "tool" if role == "function" else role
    if role not in OPENAI_ROLES:
        raise RowError(f"{where}.role", f"unknown role {role!r}; use one of {', '.join(sorted(OPENAI_ROLES))}")
    content = message.get("content")
    normalized = {"role": role, "content": "" if content is None else _text(content, f"{where}.content")}
    if message.get("tool_calls"):
        if role != "assistant":
            raise RowError(f"{where}.tool_calls", "only assistant messages can make tool calls")
        if not isinstance(message["tool_calls"], list):
            raise RowError(f"{where}.tool_calls", "expected a list of tool calls")
        normalized["tool_calls"] = [_tool_call(c, f"{where}.tool_calls") for c in message["tool_calls"]]
    elif content is None:
        raise RowError(f"{where}.content", "missing")
    return normalized


def from_openai(row: dict) -> tuple[list[dict], list]:
    if not isinstance(row["messages"], list):
        raise RowError("messages", "expected a list of {role, content} messages")
    messages = [_openai_message(message, f"messages[{i}]") for i, message in enumerate(row["messages"])]
    return messages, _tools(row.get("tools"))


FORMATS: dict[str, tuple[str, Callable[[dict], tuple[list[dict], list]]]] = {
    "sharegpt": ("conversations", from_sharegpt),
    "openai": ("messages", from_openai),
    "alpaca": ("instruction", from_alpaca),
}


# Which role may come next, given the previous turn ("tool_call" = an assistant turn that called tools). A tool
# result may also follow a plain assistant turn: some datasets (MedicalGPT's glaive sample) write the call as text.
NEXT_ROLES = {
    "start": {"user"},
    "user": {"assistant"},
    "assistant": {"user", "tool"},
    "tool_call": {"tool"},
    "tool": {"tool", "assistant"},
}


def walk_turns(messages: list[dict], report: ReadReport | None = None) -> None:
    """The one turn-order state machine: system first (optional), then user -> assistant [-> tool ... -> assistant]
    turns. Any other order is a RowError naming the turn."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    state = "start"
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        if role not in NEXT_ROLES[state]:
            expected = " or ".join(sorted(NEXT_ROLES[state]))
            after = "the start" if state == "start" else f"{'an' if state[0] in 'aeiou' else 'a'} {state!r} turn"
            article = "an" if role[0] in "aeiou" else "a"
            raise RowError(
                f"turn {i}",
                f"{article} {role!r} turn cannot follow {after}; expected {expected} (turns alternate user -> "
                "assistant, and a tool result follows the assistant turn that called the tool)",
            )
        if role == "tool" and state == "assistant" and report is not None:
            report.notes["tool result after an answer that made no structured tool call"] += 1
        state = "tool_call" if role == "assistant" and messages[i].get("tool_calls") else role


def check_turn_order(messages: list[dict], report: ReadReport) -> list[dict]:
    """A chat in a valid order (walk_turns). A trailing question with no answer is dropped (there is nothing to learn
    from it) and counted."""
    walk_turns(messages, report)
    start = 1 if messages and messages[0]["role"] == "system" else 0
    end = len(messages)
    while end > start and messages[end - 1]["role"] in ("user", "tool"):
        end -= 1
    if not any(m["role"] == "assistant" for m in messages[:end]):
        return []  # a lone question: nothing to learn; the reader skips and counts it
    if end < len(messages):
        report.notes["trailing turns without an answer dropped"] += 1
    return messages[:end]


def normalize_chat(row: dict, report: ReadReport) -> dict | None:
    if not isinstance(row, dict):
        raise RowError("row", f"expected a JSON object, got {type(row).__name__}")
    for key, convert in FORMATS.values():
        if key in row:
            messages, tools = convert(row)
            messages = check_turn_order(messages, report)
            if not messages:
                return None
            return {
                "messages": json.dumps(messages, ensure_ascii=False),
                "tools": json.dumps(tools, ensure_ascii=False) if tools else "",
            }
    keys = ", ".join(repr(k) for k in row) or "none"
    raise RowError(
        "row",
        f"unknown chat format (keys: {keys}); expected 'conversations' (ShareGPT), 'messages' "
        "(OpenAI) or 'instruction'+'output' (Alpaca)",
    )


def normalize_text(row: Any, report: ReadReport) -> dict:
    if isinstance(row, str):
        return {"text": row}
    if not isinstance(row, dict) or "text" not in row:
        raise RowError("text", 'pre-training rows need {"text": "..."}')
    return {"text": _text(row["text"], "text")}


# ---------------------------------------------------------------- preference pairs


def _answer(value: Any, where: str) -> dict:
    """A chosen/rejected answer: a string, or an assistant message (list of one, or a dict), maybe with tool calls."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RowError(where, f"expected one assistant message, got {len(value)} messages")
        value = value[0]
    if isinstance(value, dict):
        if value.get("role", "assistant") != "assistant":
            raise RowError(where, f"the answer must be an assistant message, got role {value.get('role')!r}")
        message = _openai_message({**value, "role": "assistant"}, where)
    else:
        message = {"role": "assistant", "content": _text(value, where)}
    if not message["content"].strip() and not message.get("tool_calls"):
        raise RowError(where, "is empty")
    return message


def _implicit_prompt(row: dict) -> tuple[list, Any, Any]:
    """TRL's implicit-prompt rows: chosen and rejected are whole conversations sharing the prompt turns."""
    chosen, rejected = row["chosen"], row["rejected"]
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def normalize_preference(row: dict, report: ReadReport) -> dict:
    if not isinstance(row, dict):
        raise RowError("row", f"expected a JSON object, got {type(row).__name__}")
    if "conversations" in row:  # MedicalGPT: the prompt turns, then two answer strings
        prompt, tools = from_sharegpt(row)
        chosen_value, rejected_value = row.get("chosen"), row.get("rejected")
    elif "question" in row:  # the older Alpaca-like pairs
        prompt, tools = from_alpaca(
            {"instruction": row["question"], "output": "", "history": row.get("history"), "system": row.get("system")}
        )
        prompt = prompt[:-1]
        for name in ("response_chosen", "response_rejected"):
            if row.get(name) is None:
                raise RowError(name, "missing; these rows need question, response_chosen and response_rejected")
        chosen_value, rejected_value = row["response_chosen"], row["response_rejected"]
    elif "chosen" in row or "rejected" in row:  # TRL: explicit or implicit prompt
        tools = _tools(row.get("tools"))
        chosen_value, rejected_value = row.get("chosen"), row.get("rejected")
        if "prompt" not in row and isinstance(chosen_value, list) and isinstance(rejected_value, list):
            prompt, chosen_value, rejected_value = _implicit_prompt(row)
            if not prompt:
                raise RowError("chosen", "shares no prompt turns with 'rejected'; give an explicit 'prompt'")
            prompt = from_openai({"messages": prompt})[0]
        elif "prompt" not in row:
            raise RowError("prompt", "missing; give the question as 'prompt' (or whole chats as chosen/rejected)")
        else:
            prompt = row["prompt"]
            if isinstance(prompt, list):
                prompt = from_openai({"messages": prompt})[0]
            else:
                prompt = [{"role": "user", "content": _text(prompt, "prompt")}]
    else:
        keys = ", ".join(repr(k) for k in row) or "none"
        raise RowError(
            "row",
            f"unknown preference format (keys: {keys}); expected 'conversations'+'chosen'+"
            "'rejected' (MedicalGPT), 'prompt'+'chosen'+'rejected' (TRL) or 'question'+"
            "'response_chosen'+'response_rejected'",
        )
    for name, value in (("chosen", chosen_value), ("rejected", rejected_value)):
        if value is None:
            raise RowError(name, "missing; preference rows need a chosen and a rejected answer")
    chosen = _answer(chosen_value, "chosen")
    rejected = _answer(rejected_value, "rejected")
    if chosen == rejected:
        raise RowError("rejected", "is identical to 'chosen'; the pair teaches nothing")
    check_prompt_order(prompt)
    return {
        "prompt": json.dumps(prompt, ensure_ascii=False),
        "chosen": json.dumps(chosen, ensure_ascii=False),
        "rejected": json.dumps(rejected, ensure_ascii=False),
        "tools": json.dumps(tools, ensure_ascii=False) if tools else "",
    }


def check_prompt_order(prompt: list[dict]) -> None:
    """The turns before the two answers: in a valid order (walk_turns), ending with the user (or a tool result)."""
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        last = prompt[-1]["role"] if prompt else "nothing"
        raise RowError("prompt", f"must end with a user turn (or a tool result) to answer, but ends with {last}")
    walk_turns(prompt)


# ---------------------------------------------------------------- prompts to answer (inference, PPO, GRPO)

PROMPT_KEYS = ("prompt", "instruction", "question", "query", "input", "text")
ANSWER_KEYS = ("answer", "solution", "output", "response")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _options(value: Any) -> dict[str, str]:
    """Multiple-choice options: {"A": text, ...} or a list of texts (lettered A, B, ...)."""
    if isinstance(value, list):
        value = dict(zip(LETTERS, value, strict=False))
    if not isinstance(value, dict) or not value:
        raise RowError("options", 'expected {"A": "option text", ...} or a list of option texts')
    return {str(k).strip(): _text(v, f"options[{k!r}]") for k, v in value.items()}


def _choice_answer(value: Any, options: dict[str, str]) -> str:
    """The correct letter(s) of a multiple-choice row: "B", "AC", or an option index (MedMCQA's `cop`)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
        return list(options)[value]
    letters = "".join(ch for ch in _text(value, "answer").upper() if ch.isalnum())
    if not letters or any(letter not in options for letter in letters):
        raise RowError("answer", f"{value!r} is not among the option letters {', '.join(options)}")
    return letters


def _chat_prompt(row: dict) -> tuple[list[dict], list, str]:
    """A chat row as prompt turns and reference answer: the final assistant turn (if any) is the answer."""
    turns, tools = from_openai(row) if "messages" in row else from_sharegpt(row)
    answer = ""
    if turns and turns[-1]["role"] == "assistant":
        answer = turns[-1]["content"]
        turns = turns[:-1]
    return turns, tools, answer


def normalize_prompt_row(row: Any, report: ReadReport | None = None) -> dict:
    """A prompt to answer and what the reward functions may check the answer against.

    Accepted rows: a chat (ShareGPT or OpenAI; a final assistant turn becomes the reference answer, earlier turns
    stay as history), an Alpaca row (output = reference), {"question", "answer"} (MedicalGPT's GRPO rows), a
    multiple-choice row {"question", "options", "answer": letter(s)}, or {"prompt": text or messages, "answer"?}.
    Any other scalar fields are kept in `extra` (JSON) for custom reward functions.
    """
    if not isinstance(row, dict):
        raise RowError("row", f"expected a JSON object, got {type(row).__name__}")
    tools: list = []
    answer: Any = ""
    options: dict[str, str] = {}
    used = {"tools", "options", "system", "system_prompt", *ANSWER_KEYS}
    if "messages" in row or "conversations" in row:
        prompt, tools, answer = _chat_prompt(row)
        used |= {"messages", "conversations"}
    elif isinstance(row.get("instruction"), str):
        prompt = from_alpaca({**row, "output": ""})[0][:-1]  # system, history and instruction as in training
        used |= {"instruction", "input", "history"}
    else:
        key = next((k for k in PROMPT_KEYS if k in row), None)
        if key is None:
            keys = ", ".join(repr(k) for k in row) or "none"
            raise RowError(
                "row",
                f"no prompt found (keys: {keys}); give one of {', '.join(PROMPT_KEYS)}, messages or conversations",
            )
        used.add(key)
        value = row[key]
        if isinstance(value, list):
            prompt, tools = from_openai({"messages": value, "tools": row.get("tools")})
        else:
            prompt = [{"role": "user", "content": _text(value, key)}]
            system = row.get("system_prompt") or row.get("system")
            if system:
                prompt.insert(0, {"role": "system", "content": _text(system, "system")})
    if not answer:
        answer = next((row[k] for k in ANSWER_KEYS if row.get(k) not in (None, "")), "")
    if not prompt:
        raise RowError("prompt", "has no user turn to answer")
    if row.get("options") not in (None, "", [], {}):
        options = _options(row["options"])
        answer = _choice_answer(answer, options) if answer not in (None, "") else ""
        listing = "\n".join(f"{letter}. {text}" for letter, text in options.items())
        prompt[-1] = {**prompt[-1], "content": f"{prompt[-1]['content']}\n{listing}"}
    elif not isinstance(answer, str):
        answer = json.dumps(answer, ensure_ascii=False) if isinstance(answer, (list, dict)) else str(answer)
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise RowError("prompt", "has no user turn to answer")
    check_prompt_order(prompt)
    extra = {k: v for k, v in row.items() if k not in used and isinstance(v, (str, int, float, bool))}
    return {
        "prompt": json.dumps(prompt, ensure_ascii=False),
        "tools": json.dumps(tools, ensure_ascii=False) if tools else "",
        "answer": answer,
        "options": json.dumps(options, ensure_ascii=False) if options else "",
        "extra": json.dumps(extra, ensure_ascii=False) if extra else "",
    }


NORMALIZERS: dict[str, Callable[[Any, ReadReport], dict | None]] = {
    "chat": normalize_chat,
    "text": normalize_text,
    "preference": normalize_preference,
    "prompt": normalize_prompt_row,
}
