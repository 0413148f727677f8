"""Reading training data: local folders or `datasets` names, format detection, and row validation.

Every row is checked while it is read. A bad row stops the run with a message naming file, line and field, or,
with --skip_bad_rows, is skipped and counted in a summary. Rows with nothing to learn (a question without any
answer) are always skipped and counted. Chat rows of all formats become one normalized shape:
`messages` (a JSON list of {"role", "content"[, "tool_calls"]}) and `tools` (a JSON list or "").

Chat formats, detected from the keys of each row:
  sharegpt  {"conversations": [{"from": "human|gpt|system|function_call|observation", "value": ...}], "tools"?}
  alpaca    {"instruction", "input"?, "output", "history"?: [[q, a], ...], "system"?}
  openai    {"messages": [{"role": "system|user|assistant|tool", "content", "tool_calls"?}], "tools"?}
Pre-training: `.txt` files (one document per line) or rows {"text": ...}.
"""

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError

from medgpt import __version__
from medgpt.args import DataArguments
from medgpt.errors import UserError

logger = logging.getLogger(__name__)

Kind = Literal["chat", "text"]
EXTENSIONS = {"chat": (".jsonl", ".json"), "text": (".txt", ".jsonl", ".json")}
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
        role = SHAREGPT_ROLES.get(turn["from"])
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
    for i, pair in enumerate(row.get("history") or []):
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


def from_openai(row: dict) -> tuple[list[dict], list]:
    if not isinstance(row["messages"], list):
        raise RowError("messages", "expected a list of {role, content} messages")
    messages = []
    for i, message in enumerate(row["messages"]):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or "role" not in message:
            raise RowError(where, 'each message needs "role" and "content"')
        role = "tool" if message["role"] == "function" else message["role"]
        if role not in OPENAI_ROLES:
            raise RowError(f"{where}.role", f"unknown role {role!r}; use one of {', '.join(sorted(OPENAI_ROLES))}")
        content = message.get("content")
        normalized = {"role": role, "content": "" if content is None else _text(content, f"{where}.content")}
        if message.get("tool_calls"):
            if role != "assistant":
                raise RowError(f"{where}.tool_calls", "only assistant messages can make tool calls")
            normalized["tool_calls"] = [_tool_call(c, f"{where}.tool_calls") for c in message["tool_calls"]]
        elif content is None:
            raise RowError(f"{where}.content", "missing")
        messages.append(normalized)
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


def check_turn_order(messages: list[dict], report: ReadReport) -> list[dict]:
    """System first (optional), then user -> assistant [-> tool ... -> assistant] turns. A trailing question with
    no answer is dropped (there is nothing to learn from it) and counted; any other order is an error."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    state = "start"
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        if role not in NEXT_ROLES[state]:
            expected = " or ".join(sorted(NEXT_ROLES[state]))
            after = "the start" if state == "start" else f"a {state!r} turn"
            raise RowError(
                f"turn {i}",
                f"a {role!r} turn cannot follow {after}; expected {expected} (turns alternate user -> assistant, and "
                "a tool result follows the assistant turn that called the tool)",
            )
        if role == "tool" and state == "assistant":
            report.notes["tool result after an answer that made no structured tool call"] += 1
        state = "tool_call" if role == "assistant" and messages[i].get("tool_calls") else role
    end = len(messages)
    while end > start and messages[end - 1]["role"] in ("user", "tool"):
        end -= 1
    if end < len(messages):
        report.notes["trailing turns without an answer dropped"] += 1
    if not any(m["role"] == "assistant" for m in messages[:end]):
        return []  # a lone question: nothing to learn; the reader skips and counts it
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
            return {"messages": json.dumps(messages, ensure_ascii=False), "tools": json.dumps(tools) if tools else ""}
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


# ---------------------------------------------------------------- reading files


def find_files(folder: str, kind: Kind, flag: str) -> list[Path]:
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in EXTENSIONS[kind])
    if not files:
        raise UserError(f"--{flag} {folder} holds no {'/'.join(EXTENSIONS[kind])} files.")
    return files


def _file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for .jsonl, .json (a list of rows) and .txt (one document per line)."""
    if path.suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
        return
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno}).") from None
            for index, row in enumerate(rows):
                yield index + 1, row  # rows of a JSON array are numbered from 1 ("row N")
            return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield number, RowError(None, f"invalid JSON ({err.msg} at column {err.colno})")


def read_rows(
    sources: list[tuple[str, Iterator[tuple[int, Any]]]],
    kind: Kind,
    skip_bad_rows: bool,
    keep_linebreaks: bool,
    report: ReadReport,
) -> Iterator[dict]:
    normalize = normalize_chat if kind == "chat" else normalize_text
    for name, rows in sources:
        count, skipped_before = 0, sum(report.skipped.values())
        for number, row in rows:
            try:
                if isinstance(row, RowError):
                    raise row
                if kind == "text" and isinstance(row, str):
                    row = row if keep_linebreaks else row.rstrip("\r\n")
                normalized = normalize(row, report)
                if normalized is None:
                    report.skipped["conversation without any answer"] += 1
                    continue
                yield normalized
                count += 1
            except RowError as err:
                if not skip_bad_rows:
                    raise UserError(
                        f"{name}:{number}: {err}. Fix the row, or pass --skip_bad_rows to skip bad rows and count "
                        "them."
                    ) from None
                report.skipped["invalid JSON" if str(err).startswith("invalid JSON") else str(err).split(":")[0]] += 1
                if len(report.examples) < 3:
                    report.examples.append(f"{name}:{number}: {err}")
        report.rows += count
        if count == 0 and sum(report.skipped.values()) == skipped_before:
            raise UserError(f"{name}: no rows found (empty file). Remove it or add data.")


def _rows_from_files(
    files: list[tuple[str, int, int]],
    kind: Kind,
    skip_bad_rows: bool,
    keep_linebreaks: bool,
    report: ReadReport,
    version: str,
) -> Iterator[dict]:
    # (path, size, mtime) identify the files so the datasets cache is invalidated when one changes.
    sources = [(path, _file_rows(Path(path))) for path, _, _ in files]
    yield from read_rows(sources, kind, skip_bad_rows, keep_linebreaks, report)


def _rows_from_dataset(
    dataset: Dataset,
    name: str,
    kind: Kind,
    skip_bad_rows: bool,
    keep_linebreaks: bool,
    report: ReadReport,
    version: str,
) -> Iterator[dict]:
    yield from read_rows([(name, enumerate(dataset, 1))], kind, skip_bad_rows, keep_linebreaks, report)


def _build(generator: Callable, gen_kwargs: dict, what: str, cache_dir: str | None) -> Dataset:
    """Validated rows as an Arrow dataset in the datasets cache (so tokenization results are cached too)."""
    report = ReadReport()
    try:
        dataset = Dataset.from_generator(
            generator, gen_kwargs={**gen_kwargs, "report": report, "version": __version__}, cache_dir=cache_dir
        )
    except DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise
    except ValueError as err:  # no row at all: datasets cannot infer a schema
        if report.rows == 0:
            report.log(what)
            raise UserError(f"{what}: every row was skipped or empty; nothing left to train on.") from None
        raise err
    if report.rows or report.skipped:
        report.log(what)
    else:
        logger.info("%s: %d rows (validated earlier, read from the datasets cache)", what, len(dataset))
    return dataset


def load_split(
    files: list[Path],
    kind: Kind,
    data_args: DataArguments,
    keep_linebreaks: bool,
    what: str,
    cache_dir: str | None = None,
) -> Dataset:
    stamped = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return _build(
        _rows_from_files,
        {"files": stamped, "kind": kind, "skip_bad_rows": data_args.skip_bad_rows, "keep_linebreaks": keep_linebreaks},
        what,
        cache_dir,
    )


def load_hub_split(
    dataset: Dataset,
    name: str,
    kind: Kind,
    data_args: DataArguments,
    keep_linebreaks: bool,
    cache_dir: str | None = None,
) -> Dataset:
    return _build(
        _rows_from_dataset,
        {
            "dataset": dataset,
            "name": name,
            "kind": kind,
            "skip_bad_rows": data_args.skip_bad_rows,
            "keep_linebreaks": keep_linebreaks,
        },
        name,
        cache_dir,
    )


def load_datasets(
    data_args: DataArguments, kind: Kind, seed: int = 42, keep_linebreaks: bool = True, cache_dir: str | None = None
) -> DatasetDict:
    """Train (and, when available, validation) splits of normalized rows.

    Without validation files, `validation_split_percentage` of the training rows (shuffled with `seed`) are held
    out; the eval split is never empty when it is asked for and there are at least two rows.
    """
    splits: dict[str, Dataset] = {}
    if data_args.train_file_dir:
        splits["train"] = load_split(
            find_files(data_args.train_file_dir, kind, "train_file_dir"),
            kind,
            data_args,
            keep_linebreaks,
            "train",
            cache_dir,
        )
    if data_args.validation_file_dir:
        splits["validation"] = load_split(
            find_files(data_args.validation_file_dir, kind, "validation_file_dir"),
            kind,
            data_args,
            keep_linebreaks,
            "validation",
            cache_dir,
        )
    if data_args.dataset_name:
        hub = _load_named_dataset(data_args, cache_dir)
        for split_name, split in hub.items():
            target = "validation" if split_name in ("validation", "valid", "dev") else split_name
            if target in ("train", "validation") and target not in splits:
                splits[target] = load_hub_split(
                    split, f"{data_args.dataset_name}[{split_name}]", kind, data_args, keep_linebreaks, cache_dir
                )
    if "train" not in splits:
        raise UserError("no training split found: pass --train_file_dir DIR or a --dataset_name with a train split.")
    if "validation" not in splits and data_args.validation_split_percentage > 0:
        train = splits["train"]
        n_eval = max(1, int(len(train) * data_args.validation_split_percentage / 100))
        if len(train) >= 2:
            parts = train.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
            splits["train"], splits["validation"] = parts["train"], parts["test"]
        else:
            logger.warning("only %d training row: no validation split held out", len(train))
    return DatasetDict(splits)


def _load_named_dataset(data_args: DataArguments, cache_dir: str | None) -> DatasetDict:
    name = data_args.dataset_name
    try:
        if Path(name).is_dir() and any(Path(name, f).exists() for f in ("dataset_dict.json", "state.json")):
            loaded = load_from_disk(name)
        else:
            loaded = load_dataset(name, data_args.dataset_config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise UserError(
            f"--dataset_name {name}: could not load it ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Use a local folder with --train_file_dir, or check the name and your network/HF_DATASETS_OFFLINE."
        ) from None
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def cap(dataset: Dataset | None, limit: int | None) -> Dataset | None:
    if dataset is None or limit is None or limit >= len(dataset):
        return dataset
    return dataset.select(range(limit))
