"""Tool formats: how a chat lists tools in the system prompt, how an assistant writes tool calls and how results
come back, and reading calls back out of generated text (`parse_tool_calls`). One `ToolFormat` row per family."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]


def fill(fmt: str, **values: str) -> str:
    """Replace `{key}` slots in one pass, so braces elsewhere (JSON examples) need no escaping and text inside
    the values is never substituted again."""
    pattern = re.compile(r"\{(" + "|".join(values) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], fmt)


def _to_json(value: Any) -> str:
    # Same output as the `tojson` filter of transformers' chat-template environment.
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class ToolFormat:
    """How tools are listed in the system prompt, how an assistant writes calls and how results come back."""

    name: str
    tools: str  # the tool list, `{tools}` = the `tool` entries joined by `tool_sep`
    tool: str  # one tool: `{json}` (the whole spec), `{name}`, `{description}`, `{parameters}` (JSON)
    call: str  # one call: `{name}`, `{arguments}` (JSON)
    result: str  # one tool result: `{content}`
    tool_sep: str = "\n"
    calls: str = "{calls}"  # all calls of a turn, `{calls}` = the `call` entries joined by `call_sep`
    call_sep: str = "\n"
    result_sep: str = "\n"  # between consecutive results, which share one tool turn


TOOL_FORMATS: dict[str, ToolFormat] = {
    f.name: f
    for f in (
        # ReAct text, understood by any model.
        ToolFormat(
            name="default",
            tools="You have access to the following tools:\n{tools}\n\n"
            "To use a tool, answer with:\nAction: <tool name>\nAction Input: <the arguments as a JSON object>\n"
            "The tool's output then comes back as Observation: <output>.",
            tool="> Tool Name: {name}\nTool Description: {description}\nTool Args: {parameters}",
            call="Action: {name}\nAction Input: {arguments}",
            result="Observation: {content}",
        ),
        # Hermes style, exactly as the official Qwen2.5 / Qwen3 chat templates write it.
        ToolFormat(
            name="qwen",
            tools="# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>"
            "\n\nFor each function call, return a json object with function name and arguments within "
            '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
            "<args-json-object>}\n</tool_call>",
            tool="{json}",
            call='<tool_call>\n{"name": "{name}", "arguments": {arguments}}\n</tool_call>',
            result="<tool_response>\n{content}\n</tool_response>",
        ),
        ToolFormat(
            name="glm4",
            tools="# 可用工具\n\n{tools}",
            tool="## {name}\n\n{json}\n在调用上述函数时，请使用 Json 格式表示调用的参数。",
            tool_sep="\n\n",
            call="{name}\n{arguments}",
            result="<|observation|>\n{content}",
        ),
        # Llama 3.1 JSON calls ("parameters", not "arguments").
        ToolFormat(
            name="llama3",
            tools="You have access to the following functions. To call a function, please respond with JSON for a "
            'function call. Respond in the format {"name": function name, "parameters": dictionary of argument '
            "name and its value}. Do not use variables.\n\n{tools}",
            tool="{json}",
            tool_sep="\n\n",
            call='{"name": "{name}", "parameters": {arguments}}',
            result="{content}",
        ),
        ToolFormat(
            name="mistral",
            tools="[AVAILABLE_TOOLS] [{tools}][/AVAILABLE_TOOLS]",
            tool="{json}",
            tool_sep=", ",
            call='{"name": "{name}", "arguments": {arguments}}',
            calls="[TOOL_CALLS] [{calls}]",
            call_sep=", ",
            result='[TOOL_RESULTS] {"content": {content}}[/TOOL_RESULTS]',
        ),
    )
}


def tools_text(tool_format: str, tools: list[dict] | None) -> str:
    """The tool list as system-prompt text in one of the TOOL_FORMATS ("" without tools)."""
    if not tools:
        return ""
    fmt = TOOL_FORMATS[tool_format]
    entries = []
    for tool in tools:
        spec = tool.get("function", tool)
        entries.append(
            fill(
                fmt.tool,
                json=_to_json(tool),
                name=spec["name"],
                description=spec.get("description") or "",
                parameters=_to_json(spec.get("parameters") or {}),
            )
        )
    return fill(fmt.tools, tools=fmt.tool_sep.join(entries))


def answer_text(tool_format: str, content: str, tool_calls: list[dict] | None) -> str:
    """An assistant answer with its tool calls written out in one of the TOOL_FORMATS."""
    if not tool_calls:
        return content
    fmt = TOOL_FORMATS[tool_format]
    calls = []
    for call in tool_calls:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        arguments = arguments if isinstance(arguments, str) else _to_json(arguments)
        calls.append(fill(fmt.call, name=function["name"], arguments=arguments))
    text = fill(fmt.calls, calls=fmt.call_sep.join(calls))
    return f"{content}\n{text}" if content else text


def parse_tool_calls(tool_format: str, text: str, tool_names: set[str] | None = None) -> tuple[str, list[dict]]:
    """The inverse of `answer_text`: (content, OpenAI tool_calls) from an answer the model wrote.

    Calls are found by the format's own call pattern (`{name}` then a JSON `{arguments}` object; the closing text
    may be missing); with `tool_names` only calls of those tools count. The content is the text before the first
    call. Text that holds no call comes back unchanged with no calls."""
    fmt = TOOL_FORMATS[tool_format]
    before_name, after_name = fmt.call.split("{name}")
    between, after_arguments = after_name.split("{arguments}")
    call_open = fill(fmt.calls, calls="\x00").split("\x00")[0]  # e.g. "[TOOL_CALLS] [" around all calls
    decoder = json.JSONDecoder()
    name_pattern = re.compile(re.escape(before_name) + r"([\w.\-]+)" + re.escape(between))
    calls, first_start, position = [], None, 0
    while match := name_pattern.search(text, position):
        name = match.group(1)
        try:
            arguments, end = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            position = match.start() + 1
            continue
        if not isinstance(arguments, dict) or (tool_names is not None and name not in tool_names):
            position = match.start() + 1
            continue
        first_start = match.start() if first_start is None else first_start
        calls.append({"type": "function", "function": {"name": name, "arguments": _to_json(arguments)}})
        # The closing text (e.g. "}\n</tool_call>") is skipped when present; small models sometimes garble it.
        closing = after_arguments.strip()
        rest = text[end:].lstrip()
        position = len(text) - len(rest) + (len(closing) if closing and rest.startswith(closing) else 0)
    if not calls:
        return text, []
    content = text[:first_start]
    if call_open.strip() and content.rstrip().endswith(call_open.strip()):
        content = content.rstrip()[: -len(call_open.strip())]
    return content.strip(), calls


# MedicalGPT's names for the Qwen3 families: they write tools the way Qwen2.5 does.
TOOL_FORMAT_ALIASES = {"qwen3": "qwen", "qwen3.5": "qwen", "qwen3_5": "qwen"}
