"""Fuzzing the data path: random JSON and near-valid rows of every kind (chat, pre-training text, preference pairs,
prompts) are written to files, read, validated and tokenized the way the stages do it.

The property: every row is either accepted, and then tokenizes, or refused with a UserError that names its file
and line. No other exception may escape. Pure random JSON rarely gets past the format detection, so most rows are
valid rows of one of the documented shapes with a few random edits inside (a value replaced by junk, a key or a
turn deleted or repeated). Files also hold invalid JSON, truncated lines, blank lines, bytes that are not UTF-8 and
lone UTF-16 surrogates; .json files are sometimes one (possibly broken) JSON array.

The examples are derandomized, so every run tries the same ones and a failure prints the smallest file hypothesis
found; MEDGPT_FUZZ_EXAMPLES=5000 searches longer with new random examples, and `--hypothesis-show-statistics`
shows which rows were accepted and why the others were refused. Shapes that are known to fail outside the data
readers are left out of the fuzzing and kept as strict xfail tests at the end of the file.
"""

import copy
import functools
import json
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

import datasets
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from tiny_model import build_tokenizer

from medgpt.args import DataArguments, PreferenceArguments
from medgpt.chat import get_template, with_tool_format
from medgpt.data import file_rows, load_datasets, read_prompt_file, read_rows
from medgpt.errors import UserError
from medgpt.formats import ReadReport
from medgpt.preference import tokenize_pairs
from medgpt.prompts import conversational_prompts, tokenize_prompts, with_system
from medgpt.tokenization import IGNORE_INDEX, pack, tokenize_pretrain, tokenize_sft

# MEDGPT_FUZZ_EXAMPLES=5000 searches longer, with new random examples on every run.
LONGER = int(os.environ.get("MEDGPT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=LONGER or 300,
    deadline=None,
    derandomize=not LONGER,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@functools.cache
def tokenizer():
    return build_tokenizer()


@functools.cache
def templates() -> list:
    """Templates of different shapes: ChatML with Hermes tools, a default system prompt, empty think blocks, a
    folded system prompt, the other tool formats, and the tokenizer's own chat_template (auto, the default)."""
    named = [get_template(name) for name in ("qwen2.5", "chatml", "qwen3", "llama3", "mistral", "llama2")]
    tool_formats = [with_tool_format(get_template("chatml"), fmt) for fmt in ("default", "glm4")]
    return named + tool_formats + [get_template("auto", tokenizer())]


def template_for(data, rows: list[dict]):
    """A template to render `rows` with. Auto mode gets only rows without its two known failures: text holding NUL
    characters (test_auto_template_and_nul_text), and pairs with an answer that starts with whitespace
    (test_auto_template_and_answers_with_leading_whitespace)."""
    template = data.draw(st.sampled_from(templates()))
    nul = any("\\u0000" in value for row in rows for value in row.values())
    space = any(
        json.loads(row[name])["content"][:1].isspace()
        for row in rows
        for name in ("chosen", "rejected")
        if name in row
    )
    return get_template("chatml") if template.name == "auto" and (nul or space) else template


@pytest.fixture(scope="module", autouse=True)
def quiet_progress_bars():
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if was_enabled:
        datasets.enable_progress_bars()


# ---------------------------------------------------------------- values

WEIRD_TEXT = [
    "",
    " ",
    "\n",
    "\r\n",
    "\t",
    "\x00",
    "\x0b\x0c\x1c\x85\u2028\u2029",  # line breaks to str.splitlines, not to a file reader
    "\ufeff",
    "😀",
    "e\u0301",
    "ß",
    "①Ⅻ",
    "患者发热三天，怎么办？",
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "{content}",
    "{name} {arguments}",
    "\x000\x00",
    "Action: f\nAction Input: {}",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    "null",
    "[]",
    "{}",
    "A, C",
    "b",
    "ab",
    "\ud800",  # lone surrogates: written as a JSON escape, or as bytes that are not UTF-8
    "a\udcff",
]
KEYS = [
    "conversations",
    "messages",
    "instruction",
    "input",
    "output",
    "history",
    "system",
    "system_prompt",
    "tools",
    "from",
    "value",
    "role",
    "content",
    "tool_calls",
    "type",
    "function",
    "name",
    "arguments",
    "description",
    "parameters",
    "text",
    "prompt",
    "chosen",
    "rejected",
    "question",
    "response_chosen",
    "response_rejected",
    "query",
    "answer",
    "solution",
    "response",
    "options",
]
ROLES = ["system", "human", "user", "gpt", "assistant", "function_call", "observation", "tool", "function"]
BAD_ROLES = ["nurse", "", "Human", "ASSISTANT", "developer"]
SPECIAL = [None, True, False, 0, 1, -1, 2, 26, 2**70, 1.5, float("nan"), float("inf"), [], {}, [[]], [""], [None]]

# Strategies are wrapped in st.deferred so that a failure report names them instead of printing their definitions.
HUGE_TEXT = st.sampled_from([("x", 3000), ("lorem ipsum dolor ", 300), ("患", 2000)]).map(lambda p: p[0] * p[1])
text = st.deferred(lambda: st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(WEIRD_TEXT), HUGE_TEXT))
key = st.deferred(lambda: st.one_of(st.sampled_from(KEYS), st.text(max_size=8)))
scalar = st.deferred(lambda: st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text))
json_value = st.deferred(
    lambda: st.recursive(
        scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=4), max_leaves=10
    )
)
junk = st.deferred(
    lambda: st.one_of(json_value, text, st.sampled_from(ROLES + BAD_ROLES), st.sampled_from(SPECIAL))
).map(copy.deepcopy)  # SPECIAL holds mutable values: no row may share them

tool_name = st.deferred(lambda: st.one_of(st.sampled_from(["get_weather", "find_pharmacy", "f.x-1", ""]), text))
arguments = st.deferred(
    lambda: st.one_of(
        st.dictionaries(text, scalar, max_size=3),
        st.dictionaries(text, scalar, max_size=3).map(json.dumps),
        st.just(""),
        json_value,
    )
)
bare_call = st.fixed_dictionaries({"name": tool_name}, optional={"arguments": arguments})
call = st.deferred(lambda: st.one_of(bare_call, bare_call.map(lambda c: {"type": "function", "function": c})))
parameters = st.deferred(
    lambda: st.one_of(
        st.just({"type": "object", "properties": {"city": {"type": "string"}}}), st.dictionaries(key, json_value)
    )
)
bare_tool = st.fixed_dictionaries({"name": tool_name}, optional={"description": text, "parameters": parameters})
tool = st.deferred(lambda: st.one_of(bare_tool, bare_tool.map(lambda t: {"type": "function", "function": t})))
tools = st.deferred(
    lambda: st.one_of(
        st.lists(tool, max_size=2), st.lists(tool, max_size=2).map(json.dumps), tool, tool.map(json.dumps)
    )
)


# ---------------------------------------------------------------- rows: valid shapes, then random edits


def sometimes(n: int) -> st.SearchStrategy[bool]:
    """True once in `n` draws. Hypothesis favours the first choice (and 0), so the rare case must come last."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def turns(draw, ask: bool = False) -> list[tuple[str, object]]:
    """A conversation in a valid order: [system], (user, [tool calls, results], assistant)*, then a final user
    turn or tool result when `ask` (a prompt to answer), maybe one anyway (a trailing question)."""
    out: list[tuple[str, object]] = []
    if draw(st.booleans()):
        out.append(("system", draw(text)))
    for _ in range(draw(st.sampled_from([1, 2, 0]))):
        out.append(("user", draw(text)))
        if draw(sometimes(4)):
            out.append(("calls", draw(st.lists(call, min_size=1, max_size=2))))
            out += [("tool", draw(text)) for _ in range(draw(st.integers(1, 2)))]
        out.append(("assistant", draw(text)))
    if ask and draw(sometimes(5)):
        out += [("user", draw(text)), ("calls", draw(st.lists(call, min_size=1, max_size=1))), ("tool", draw(text))]
    elif ask or draw(st.booleans()):
        out.append(("user", draw(text)))
    return out


@st.composite
def sharegpt_turns(draw, ask: bool = False) -> list[dict]:
    names = {"user": ["human", "user"], "assistant": ["gpt", "assistant"], "tool": ["observation", "tool"]}
    out = []
    for role, value in draw(turns(ask)):
        if role == "calls":
            for one in value:
                out.append({"from": "function_call", "value": draw(st.sampled_from([one, json.dumps(one)]))})
        else:
            out.append({"from": draw(st.sampled_from(names.get(role, [role]))), "value": value})
    return out


@st.composite
def openai_messages(draw, ask: bool = False) -> list[dict]:
    out = []
    for role, value in draw(turns(ask)):
        if role == "calls":
            out.append({"role": "assistant", "content": draw(st.one_of(st.none(), text)), "tool_calls": value})
        else:
            out.append(
                {"role": draw(st.sampled_from(["tool", "function"])) if role == "tool" else role, "content": value}
            )
    return out


history = st.lists(st.tuples(text, text).map(list), max_size=2)
system_columns = {"system_prompt": text, "system": text}
sharegpt_row = st.fixed_dictionaries({"conversations": sharegpt_turns()}, optional={"tools": tools, **system_columns})
openai_row = st.fixed_dictionaries({"messages": openai_messages()}, optional={"tools": tools})
alpaca_row = st.fixed_dictionaries(
    {"instruction": text, "output": text}, optional={"input": text, "system": text, "history": history}
)

assistant_message = st.one_of(
    st.fixed_dictionaries({"role": st.just("assistant"), "content": text}),
    st.fixed_dictionaries({"content": text}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.one_of(st.none(), text), "tool_calls": st.lists(call, max_size=2)}
    ),
)
answer = st.one_of(text, text, assistant_message, st.lists(assistant_message, min_size=1, max_size=2))


@st.composite
def implicit_pair(draw) -> dict:
    """TRL's implicit prompt: two whole conversations that share their first messages."""
    prompt = draw(openai_messages(ask=True))
    chosen, rejected = draw(assistant_message), draw(assistant_message)
    return {"chosen": prompt + [chosen], "rejected": copy.deepcopy(prompt) + [rejected]}


@st.composite
def worse(draw, pairs) -> dict:
    """Pairs whose two answers mostly differ (the same answer twice is refused, and rarely worth a test case)."""
    row = draw(pairs)
    if not draw(sometimes(10)):
        name = "response_rejected" if "response_rejected" in row else "rejected"
        answer = row[name][-1] if isinstance(row[name], list) and row[name] else row[name]
        if isinstance(answer, dict) and isinstance(answer.get("content"), str):
            answer["content"] += " (worse)"
        elif isinstance(answer, str):
            row[name] += " (worse)"
    return row


preference_row = worse(
    st.one_of(
        st.fixed_dictionaries(
            {"conversations": sharegpt_turns(ask=True), "chosen": text, "rejected": text},
            optional={"tools": tools, **system_columns},
        ),
        st.fixed_dictionaries(
            {"question": text, "response_chosen": text, "response_rejected": text},
            optional={"history": history, "system": text},
        ),
        st.fixed_dictionaries(
            {"prompt": st.one_of(text, openai_messages(ask=True)), "chosen": answer, "rejected": answer},
            optional={"tools": tools},
        ),
        implicit_pair(),
    )
)

letters = st.sampled_from(["A", "b", "A, C", "AC", "a c", "E", "", "Z", "ß"])
options = st.one_of(
    st.lists(text, min_size=1, max_size=5),
    st.dictionaries(st.sampled_from("ABCDE"), text, min_size=1, max_size=5),
    st.dictionaries(st.one_of(st.sampled_from("ABCDE"), text), text, max_size=5),
)
extras = {"source": scalar, "difficulty": scalar, "id": st.integers()}
prompt_row = st.one_of(
    sharegpt_row,
    openai_row,
    alpaca_row,
    st.fixed_dictionaries({"question": text}, optional={"answer": text, **system_columns, **extras}),
    *[
        st.fixed_dictionaries(  # multiple choice
            {"question": text, "options": options, "answer": st.one_of(letters, st.integers(-1, 5), text)},
            optional={**system_columns, **extras},
        )
    ]
    * 2,
    st.fixed_dictionaries(
        {"prompt": st.one_of(text, openai_messages(ask=True))},
        optional={"solution": text, "answer": scalar, "tools": tools, **extras},
    ),
    *[
        st.fixed_dictionaries({name: text}, optional={"response": text, **extras})
        for name in ("query", "input", "text")
    ],
)
text_row = st.fixed_dictionaries({"text": text}, optional={"meta": json_value})


def _paths(value, path: tuple = ()):
    yield path
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _paths(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


@st.composite
def near_valid(draw, valid) -> object:
    """A valid row with up to two random edits anywhere inside it: a value replaced by junk, a key or an item
    deleted, an item repeated or swapped with the next one. (Random rows come from `json_value`.)"""
    row = copy.deepcopy(draw(valid))  # st.just values are shared between examples
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        paths = list(_paths(row))[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = row
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "delete", "repeat", "swap"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "repeat" and isinstance(parent, list):
            parent.insert(path[-1], copy.deepcopy(parent[path[-1]]))
        elif action == "swap" and isinstance(parent, list) and path[-1] + 1 < len(parent):
            parent[path[-1]], parent[path[-1] + 1] = parent[path[-1] + 1], parent[path[-1]]
        else:
            parent[path[-1]] = draw(junk)
    return row


ROWS = {
    "chat": st.one_of(sharegpt_row, openai_row, alpaca_row),
    "text": text_row,
    "preference": preference_row,
    "prompt": prompt_row,
}


# ---------------------------------------------------------------- files


def _encode(line: str) -> bytes:
    """UTF-8, except that lone surrogates become bytes that are not UTF-8 (a broken or wrongly encoded file)."""
    try:
        return line.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return line.encode("utf-8", "surrogatepass")


@st.composite
def broken_line(draw, rows) -> str:
    """A line that is not one JSON value: a truncated row, random text, a fragment, or nesting too deep to read."""
    kind = draw(st.sampled_from(["truncated", "text", "fragment", "deep"]))
    if kind == "deep":
        depth, close = draw(st.sampled_from([(100, "]"), (100_000, "]"), (100_000, "")]))
        return "[" * depth + close * depth
    if kind == "truncated":
        line = json.dumps(draw(rows), ensure_ascii=draw(st.booleans()))
        return line[: draw(st.integers(0, max(0, len(line) - 1)))]
    if kind == "text":
        return draw(text)
    return draw(st.sampled_from(["{", "}", "[", "]", '{"text": }', "{'text': 'single quotes'}", "NaN", "{} {}"]))


@st.composite
def data_file(draw, kind: str, txt: bool = True) -> tuple[str, bytes]:
    """(file suffix, file contents) of rows of `kind`: near-valid rows, random JSON, broken and blank lines. A .txt
    file holds pre-training documents, or questions for batch inference."""
    rows = near_valid(ROWS[kind])
    txt = txt and kind in ("text", "prompt")
    suffix = draw(st.sampled_from([".jsonl", ".json", ".json[]"] + [".txt"] * txt))
    if suffix == ".txt":
        lines = draw(st.lists(st.one_of(text, st.just("")), min_size=1, max_size=6))
    elif suffix == ".json[]":
        array = json.dumps(
            draw(st.lists(st.one_of(rows, rows, rows, json_value), min_size=1, max_size=6)),
            ensure_ascii=draw(st.booleans()),
            indent=draw(st.sampled_from([None, 1])),
        )
        if draw(sometimes(10)):  # a broken array, or one nested too deeply: the whole file is refused
            array = draw(st.sampled_from([array[: draw(st.integers(1, len(array)))], "[" * 100_000 + "]" * 100_000]))
        return ".json", _encode(array)
    else:
        ensure_ascii = draw(st.booleans())
        line = st.one_of(
            *[rows.map(lambda row: json.dumps(row, ensure_ascii=ensure_ascii))] * 6,
            json_value.map(lambda value: json.dumps(value, ensure_ascii=ensure_ascii)),
            broken_line(rows),
            st.sampled_from(["", "  "]),
        )
        lines = draw(st.lists(line, min_size=1, max_size=6))
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    return suffix, b"".join(_encode(line + newline) for line in lines)


def write(folder: Path, suffix: str, contents: bytes) -> Path:
    path = folder / f"data{suffix}"
    path.write_bytes(contents)
    return path


# ---------------------------------------------------------------- the property


def printable(err: UserError) -> str:
    """The message, which run_cli prints to the terminal: it must be text (no lone surrogates from the data)."""
    message = str(err)
    message.encode("utf-8")
    return message


def count(what: str) -> None:
    """Tallied per test by `pytest --hypothesis-show-statistics`: which rows were accepted, which refused and why."""
    if currently_in_test_context():
        event(what)


class Read(NamedTuple):
    accepted: list[dict]  # the normalized rows
    refused: list[int]  # line numbers
    unanswered: int = 0  # chats without any answer, skipped
    file_refused: bool = False  # an empty file or a broken JSON array


def read_checked(path: Path, kind: str, keep_linebreaks: bool = True) -> Read:
    """The rows of `path` that are accepted, and the line numbers of the refused ones.

    Each row is read on its own, stopping at a bad row: it must be accepted, skipped as a chat without any
    answer, or refused with `<file>:<line>:`. Then the whole file is read twice, as the stages do: skipping bad
    rows must give exactly the accepted rows and count the others, and stopping at bad rows must stop at the first
    refused row."""
    name = str(path)
    try:
        numbered = list(file_rows(path))
    except UserError as err:  # a broken JSON array refuses the whole file
        assert re.match(rf"{re.escape(name)}(:\d+)?: invalid JSON", printable(err)), err
        return Read([], [], file_refused=True)
    accepted, refused, unanswered = [], [], 0
    for number, row in numbered:
        try:
            rows = list(read_rows([(name, iter([(number, row)]))], kind, False, keep_linebreaks, ReadReport()))
        except UserError as err:
            assert printable(err).startswith(f"{name}:{number}: "), err
            refused.append(number)
            count(f"{kind} refused: " + re.sub(r"\d+", "N", str(err)[len(f"{name}:{number}: ") :].split(":")[0]))
            continue
        accepted += rows
        unanswered += not rows
        count(f"{kind} {'accepted' if rows else 'skipped: no answer'}")

    report = ReadReport()
    whole = read_rows([(name, file_rows(path))], kind, True, keep_linebreaks, report)
    if not numbered:
        with pytest.raises(UserError, match=re.escape(f"{name}: no rows found")):
            list(whole)
        return Read([], [], file_refused=True)
    assert list(whole) == accepted
    assert report.rows == len(accepted) and sum(report.skipped.values()) == len(refused) + unanswered
    stopping = read_rows([(name, file_rows(path))], kind, False, keep_linebreaks, ReadReport())
    if refused:
        with pytest.raises(UserError) as err:
            list(stopping)
        assert str(err.value).startswith(f"{name}:{refused[0]}: ")
    else:
        assert list(stopping) == accepted
    return Read(accepted, refused, unanswered)


def check_sft(rows: list[dict], template, max_length: int, train_on_inputs: bool, packing: bool) -> None:
    tokenized = tokenize_sft(datasets.Dataset.from_list(rows), tokenizer(), template, max_length, train_on_inputs)
    for ids, labels in zip(tokenized["input_ids"], tokenized["labels"], strict=True):
        assert 0 < len(ids) == len(labels) <= max_length
        assert any(label != IGNORE_INDEX for label in labels)
    if packing and len(tokenized):
        packed = pack(tokenized, max_length)
        assert sum(len(ids) for ids in packed["input_ids"]) == sum(len(ids) for ids in tokenized["input_ids"])


@given(st.data())
@FUZZ
def test_chat_rows_are_accepted_and_tokenize_or_are_refused_with_file_and_line(data):
    suffix, contents = data.draw(data_file("chat"))
    with tempfile.TemporaryDirectory() as folder:
        rows = read_checked(write(Path(folder), suffix, contents), "chat").accepted
    if rows:
        check_sft(
            rows,
            template_for(data, rows),
            data.draw(st.sampled_from([16, 48, 1024])),
            data.draw(st.booleans()),
            data.draw(st.booleans()),
        )


@given(st.data())
@FUZZ
def test_pretraining_rows_are_accepted_and_tokenize_or_are_refused_with_file_and_line(data):
    suffix, contents = data.draw(data_file("text"))
    keep_linebreaks = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as folder:
        rows = read_checked(write(Path(folder), suffix, contents), "text", keep_linebreaks).accepted
    if rows:
        block_size = data.draw(st.sampled_from([1, 8, 64]))
        packing = data.draw(st.booleans())
        blocks = tokenize_pretrain(datasets.Dataset.from_list(rows), tokenizer(), block_size, packing)
        for block in blocks:  # no block at all when packed documents are shorter than one block
            assert len(block["input_ids"]) == len(block["labels"]) and 0 < len(block["input_ids"]) <= block_size


@given(st.data())
@FUZZ
def test_preference_rows_are_accepted_and_render_or_are_refused_with_file_and_line(data):
    suffix, contents = data.draw(data_file("preference"))
    with tempfile.TemporaryDirectory() as folder:
        rows = read_checked(write(Path(folder), suffix, contents), "preference").accepted
    if rows:
        max_length = data.draw(st.sampled_from([8, 64, 1024]))
        pref_args = PreferenceArguments(
            max_source_length=data.draw(st.sampled_from([1, 32, 2048])),
            max_target_length=data.draw(st.sampled_from([2, 16, 512])),
        )
        template = template_for(data, rows)
        pairs = tokenize_pairs(datasets.Dataset.from_list(rows), tokenizer(), template, max_length, pref_args)
        for pair in pairs:
            assert pair["chosen"] and pair["rejected"]
            assert 0 < len(pair["chosen_ids"]) <= max_length and 0 < len(pair["rejected_ids"]) <= max_length


@given(st.data())
@FUZZ
def test_prompt_rows_are_accepted_and_tokenize_or_are_refused_with_file_and_line(data):
    suffix, contents = data.draw(data_file("prompt"))
    template = data.draw(st.sampled_from(templates()))
    system_prompt = data.draw(st.sampled_from(["", "Think first.", "系统"]))
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), suffix, contents)
        read = read_checked(path, "prompt") if suffix != ".txt" else None  # training: .jsonl and .json
        if suffix in (".jsonl", ".txt"):  # batch inference: stops at the first bad row
            try:
                conversations = read_prompt_file(str(path), "data_file")
            except UserError as err:
                if read and read.refused:
                    assert str(err).startswith(f"{path}:{read.refused[0]}: "), err
                else:
                    assert str(err).startswith((f"{path}:", f"--data_file {path} holds no prompts")), err
            else:
                assert read is None or (not read.refused and len(conversations) == len(read.accepted))
                for conversation in conversations:
                    rendered = template.render(with_system(conversation, system_prompt), add_generation_prompt=True)
                    tokenizer()(rendered, add_special_tokens=False)
    if read and read.accepted:
        rows = read.accepted
        dataset = datasets.Dataset.from_list(rows)
        max_source_length = data.draw(st.sampled_from([1, 16, 1024]))
        tokenized = tokenize_prompts(dataset, tokenizer(), template, max_source_length, system_prompt)
        assert all(0 < len(ids) <= max_source_length for ids in tokenized["input_ids"])
        # GRPO's rows, one prompt at a time, leaving out the shapes that are known to fail (test_grpo_columns below).
        for row in rows:
            extra = json.loads(row["extra"] or "{}").values()
            if '"tool_calls"' not in row["prompt"] and all(abs(v) < 2**63 for v in extra if isinstance(v, int)):
                assert len(conversational_prompts(datasets.Dataset.from_list([row]), system_prompt)) == 1


# ---------------------------------------------------------------- the whole reader: folders, cache, splits


@given(kind=st.sampled_from(["chat", "text", "preference", "prompt"]), data=st.data())
@settings(FUZZ, max_examples=max(40, LONGER // 10))
def test_load_datasets_stops_at_or_skips_the_same_rows(kind, data):
    """load_datasets (files -> validated Arrow rows in the datasets cache) agrees with the row-by-row reading."""
    suffix, contents = data.draw(data_file(kind, txt=kind == "text"))
    skip_bad_rows = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "train").mkdir()
        path = write(Path(folder) / "train", suffix, contents)
        read = read_checked(path, kind)
        args = DataArguments(
            train_file_dir=str(path.parent), skip_bad_rows=skip_bad_rows, validation_split_percentage=0
        )
        try:
            loaded = load_datasets(args, kind, cache_dir=str(Path(folder) / "cache"))
        except UserError as err:
            if read.file_refused:
                assert str(err).startswith(f"{path}:"), err
            elif read.refused and not skip_bad_rows:
                assert str(err).startswith(f"{path}:{read.refused[0]}: "), err
            else:
                assert not read.accepted and "every row was skipped" in str(err), err
            return
        assert not read.file_refused and (skip_bad_rows or not read.refused)
        assert loaded["train"].to_list() == read.accepted


# ---------------------------------------------------------------- known failures outside the readers


def _tool_chat(arguments) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "Weather in Beijing?"},
            {"role": "assistant", "content": None, "tool_calls": [{"name": "get_weather", "arguments": arguments}]},
            {"role": "tool", "content": "sunny"},
        ]
    }


@pytest.mark.xfail(
    strict=True, raises=(ValueError, TypeError, OverflowError), reason="prompts.py: one type per Arrow column"
)
@pytest.mark.parametrize(
    "rows",
    [
        [{"question": "Q", "difficulty": 2}, {"question": "Q", "difficulty": "hard"}],  # int and str
        [{"question": "Q", "difficulty": 2}, {"question": "Q", "difficulty": True}],  # int and bool
        [{"question": "Q", "id": 2**70}],  # beyond int64
        [_tool_chat({"city": "Beijing"}), _tool_chat({"city": 1})],  # tool-call arguments of two types
    ],
    ids=["extra-int-and-str", "extra-int-and-bool", "extra-big-int", "tool-arguments-of-two-types"],
)
def test_grpo_columns(rows, tmp_path):
    """Found by the fuzzing above: valid prompt rows that conversational_prompts cannot put into one Arrow table
    (ArrowInvalid, ArrowTypeError, OverflowError). Remove the xfail mark when prompts.py handles them."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    read = read_checked(path, "prompt")
    assert not read.refused
    assert len(conversational_prompts(datasets.Dataset.from_list(read.accepted))) == len(rows)


@pytest.mark.xfail(strict=True, raises=ValueError, reason="template.py: auto mode's answer markers")
def test_auto_template_and_nul_text(tmp_path):
    """Found by the fuzzing above: auto mode marks each answer with "\\x00<message number>\\x00" to find it, so a
    row holding that text cannot be tokenized ("auto mode cannot derive assistant masks"). Remove the xfail mark
    when template.py handles it."""
    path = tmp_path / "chat.jsonl"
    row = {"conversations": [{"from": "human", "value": "\x000\x00"}, {"from": "gpt", "value": "Rest."}]}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    rows = read_checked(path, "chat").accepted
    assert len(tokenize_sft(datasets.Dataset.from_list(rows), tokenizer(), get_template("auto", tokenizer()), 64)) == 1


def test_auto_template_and_answers_with_leading_whitespace(tmp_path):
    """Found by the fuzzing above: auto mode starts an answer's supervised text after its leading whitespace, so
    two answers of which one starts with a space or line break rendered "different prompts"; the whitespace now
    belongs to its answer."""
    path = tmp_path / "pairs.jsonl"
    row = {"conversations": [{"from": "human", "value": "Fever?"}], "chosen": "Rest.", "rejected": "\nAntibiotics."}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    rows = datasets.Dataset.from_list(read_checked(path, "preference").accepted)
    auto = get_template("auto", tokenizer())
    assert len(tokenize_pairs(rows, tokenizer(), auto, 64, PreferenceArguments())) == 1
