"""Chat templates: the one place that decides how a conversation becomes text.

Training renders text and assistant masks from a `Template` (`segments`), every saved model carries the same
format as a Jinja `chat_template` (`to_jinja`), and inference renders prompts with `render`. A template is plain
data: format strings with a `{content}` slot, laid out as

    prefix  system  user  assistant reply+stop separator  user  ...  [assistant + generation_suffix | suffix]

Messages are the normalized schema of the data layer: dicts with `role` (system/user/assistant/tool) and
`content`; assistant messages may carry OpenAI-style `tool_calls`, and a conversation may come with a `tools` list.
Tool calls, tool results and the tool list are written in one of the `TOOL_FORMATS`.

`get_template(None or "auto", tokenizer)` wraps a tokenizer's own chat_template instead (`TokenizerTemplate`).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from medgpt.chat.tools import TOOL_FORMAT_ALIASES, TOOL_FORMATS, Message, answer_text, fill, tools_text

# Strings that end a turn in common chat formats; auto mode looks for them in a tokenizer's chat_template.
KNOWN_STOPS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|END_OF_TURN_TOKEN|>",
    "<｜end▁of▁sentence｜>",
    "<|endoftext|>",
    "<|EOT|>",
    "<eoa>",
    "</s>",
)
ROLES = ("system", "user", "assistant", "tool")
_SENTINEL = re.compile(r"\x00(\d+)\x00")  # marks where answer number N starts, in auto mode


@dataclass(frozen=True)
class Template:
    """A chat format. Format strings take `{content}`; `reply` + `stop` of every assistant turn is supervised."""

    name: str
    user: str  # a user turn, e.g. "<|im_start|>user\n{content}<|im_end|>\n"
    assistant: str  # header opening an assistant turn; also the generation prompt, e.g. "<|im_start|>assistant\n"
    stop: str  # ends every assistant turn, trained so the model learns to stop, e.g. "<|im_end|>"
    system: str = "{content}\n"  # the system block, keeping its role wrapper for user-given system prompts too
    default_system: str = ""  # system text used when the conversation has none (text only, no wrapper)
    prefix: str = ""  # start of every conversation, e.g. BOS text
    reply: str = "{content}"  # supervised answer body; some formats put a space before it (llama2, mistral)
    separator: str = ""  # between the stop string and the next turn, not supervised, e.g. "\n"
    tool: str = ""  # the turn holding tool results; empty = same as `user`
    fold_system: bool = False  # system block goes inside the first user turn (llama2, mistral, gemma)
    strip: tuple[str, ...] = ()  # roles whose content is stripped of surrounding whitespace
    empty_think: str = ""  # inserted before assistant answers after the last user message (qwen3)
    empty_think_last_only: bool = True  # ... only before the final message (qwen3) or all of them (qwen3.5)
    generation_suffix: str = ""  # follows `assistant` in the generation prompt only, e.g. an empty think block
    suffix: str = ""  # ends a conversation rendered without generation prompt (phi3 writes EOS there)
    extra_stops: tuple[str, ...] = ()  # more strings that end generation (chatglm3 ends a turn with <|user|>)
    tool_format: str = "default"

    def __post_init__(self) -> None:
        if self.tool_format not in TOOL_FORMATS:
            raise ValueError(f"Unknown tool format {self.tool_format!r}. Choose one of: {', '.join(TOOL_FORMATS)}.")
        for slot in ("user", "system", "reply", "tool"):
            value = getattr(self, slot)
            if value and value.count("{content}") != 1:
                raise ValueError(f"Template {self.name!r}: `{slot}` needs exactly one {{content}}, got {value!r}.")

    @property
    def stop_words(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for s in (self.stop, *self.extra_stops) if s))

    @property
    def _tool_turn(self) -> str:
        return self.tool or self.user

    def render(
        self, messages: list[Message], tools: list[dict] | None = None, add_generation_prompt: bool = False
    ) -> str:
        """The conversation as text; add_generation_prompt ends it with the header of the next answer."""
        return "".join(text for text, _ in self._pieces(messages, tools, add_generation_prompt))

    def segments(
        self, messages: list[Message], tools: list[dict] | None = None, add_generation_prompt: bool = False
    ) -> list[tuple[str, bool]]:
        """Rendered text cut into pieces; True = supervised (trained). ''.join(texts) == render(...).

        Supervised = each assistant turn's answer and tool calls plus the stop string that ends the turn, so the
        model learns to stop. Role headers, system, user, tool results and separators are not supervised."""
        merged: list[tuple[str, bool]] = []
        for text, supervised in self._pieces(messages, tools, add_generation_prompt):
            if not text:
                continue
            if merged and merged[-1][1] == supervised:
                merged[-1] = (merged[-1][0] + text, supervised)
            else:
                merged.append((text, supervised))
        return merged

    # --- rendering -------------------------------------------------------------------------------------------

    def _content(self, message: Message) -> str:
        content = message.get("content") or ""
        return content.strip() if message["role"] in self.strip else content

    def _tools_text(self, tools: list[dict] | None) -> str:
        return tools_text(self.tool_format, tools)

    def _answer(self, content: str, tool_calls: list[dict] | None) -> str:
        """The answer text and its tool calls, before `reply` wraps it."""
        return answer_text(self.tool_format, content, tool_calls)

    def _pieces(
        self, messages: list[Message], tools: list[dict] | None, add_generation_prompt: bool
    ) -> Iterator[tuple[str, bool]]:
        rest, system = messages, ""
        if messages and messages[0]["role"] == "system":
            rest, system = messages[1:], self._content(messages[0])
        system = "\n\n".join(part for part in (system or self.default_system, self._tools_text(tools)) if part)
        fold = self.fold_system and bool(rest) and rest[0]["role"] == "user"
        last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=-1)
        fmt = TOOL_FORMATS[self.tool_format]
        tool_open, tool_close = self._tool_turn.split("{content}")

        yield self.prefix, False
        if system and not fold:
            yield fill(self.system, content=system), False
        for i, message in enumerate(rest):
            role, content = message["role"], self._content(message)
            if role == "user":
                if i == 0 and fold and system:
                    content = fill(self.system, content=system) + content
                yield fill(self.user, content=content), False
            elif role == "assistant":
                yield self.assistant, False
                if self._thinks(i, last_user, len(rest)):
                    yield self.empty_think, False
                    content = content.lstrip("\n")  # as qwen3 does after its think block
                answer = self._answer(content, message.get("tool_calls"))
                yield fill(self.reply, content=answer) + self.stop, True
                yield self.separator, False
            elif role == "tool":
                first = i == 0 or rest[i - 1]["role"] != "tool"
                last = i == len(rest) - 1 or rest[i + 1]["role"] != "tool"
                yield (tool_open if first else fmt.result_sep) + fill(fmt.result, content=content), False
                if last:
                    yield tool_close, False
            elif role == "system":
                raise ValueError(f"Template {self.name!r}: a system message may only come first.")
            else:
                raise ValueError(f"Template {self.name!r}: unknown role {role!r}; expected one of {ROLES}.")
        yield (self.assistant + self.generation_suffix) if add_generation_prompt else self.suffix, False

    def _thinks(self, index: int, last_user: int, count: int) -> bool:
        if not self.empty_think or last_user < 0 or index <= last_user:
            return False
        return index == count - 1 or not self.empty_think_last_only

    # --- Jinja -----------------------------------------------------------------------------------------------

    def to_jinja(self) -> str:
        """A Jinja chat_template rendering exactly like `render` under transformers' apply_chat_template, with
        {% generation %} markers around the supervised parts (for return_assistant_tokens_mask)."""
        fmt = TOOL_FORMATS[self.tool_format]

        def emit(fmt_string: str, **slots: str) -> str:
            return "{{- " + _jinja_expr(fmt_string, **slots) + " -}}" if fmt_string else ""

        def strip(role: str) -> str:
            return "{%- set content = content | trim -%}" if role in self.strip else ""

        tools_open, tools_close = fmt.tools.split("{tools}")
        tool_open, tool_close = self._tool_turn.split("{content}")
        system = "(messages[0].content or '')" + (" | trim" if "system" in self.strip else "")
        think = ""
        if self.empty_think:
            last = " and loop.last" if self.empty_think_last_only else ""
            think = (
                f"{{%- if ns.last_user >= 0 and loop.index0 > ns.last_user{last} -%}}"
                f"{emit(self.empty_think)}{{%- set content = content.lstrip('\\n') -%}}{{%- endif -%}}"
            )
        fold, fold_user = "false", ""
        if self.fold_system:
            fold = "loop_messages and loop_messages[0].role == 'user'"
            fold_user = (
                "{%- if loop.first and fold and ns.system -%}{%- set content = "
                f"{_jinja_expr(self.system, content='ns.system')} + content -%}}{{%- endif -%}}"
            )
        program = _JINJA.substitute(
            name=self.name,
            default_system=_jinja_str(self.default_system),
            system_content=f"{system} or ns.system",
            tools_open=emit(tools_open),
            tool_sep=emit(fmt.tool_sep),
            tool_entry=emit(
                fmt.tool,
                json="(tool | tojson)",
                name="spec.name",
                description="(spec.description or '')",
                parameters="((spec.parameters or {}) | tojson)",
            ),
            tools_close=emit(tools_close),
            fold=fold,
            prefix=emit(self.prefix),
            system_block=emit(self.system, content="ns.system"),
            strip_user=strip("user"),
            fold_user=fold_user,
            user=emit(self.user, content="content"),
            assistant=emit(self.assistant),
            strip_assistant=strip("assistant"),
            think=think,
            call_sep=emit(fmt.call_sep),
            call=emit(fmt.call, name="call.name", arguments="arguments"),
            calls=_jinja_expr(fmt.calls, calls="calls"),
            reply=emit(self.reply + self.stop, content="content"),
            separator=emit(self.separator),
            strip_tool=strip("tool"),
            tool_open=emit(tool_open),
            result_sep=emit(fmt.result_sep),
            result=emit(fmt.result, content="content"),
            tool_close=emit(tool_close),
            generation=emit(self.assistant + self.generation_suffix),
            suffix="{%- else -%}" + emit(self.suffix) if self.suffix else "",
        )
        # Slots left empty leave blank lines behind.
        return "\n".join(line for line in program.splitlines() if line.strip()) + "\n"


def _jinja_str(text: str) -> str:
    # A JSON string is a valid Jinja string literal: the lexer decodes the same backslash escapes.
    return json.dumps(text, ensure_ascii=False)


def _jinja_expr(fmt: str, **slots: str) -> str:
    """A Jinja expression for a format string, with each `{slot}` replaced by the given Jinja expression."""
    if not slots:
        return _jinja_str(fmt)
    pieces = re.split(r"\{(" + "|".join(slots) + r")\}", fmt)
    # re.split alternates literal text and slot names.
    parts = [slots[p] if i % 2 else _jinja_str(p) for i, p in enumerate(pieces) if i % 2 or p]
    return " + ".join(parts) or '""'


# The one program behind every `Template.to_jinja()`; `$name` slots are filled with the template's fields.
_JINJA = string.Template(r"""{#- chat template "$name", generated by template.py -#}
{%- set ns = namespace(system=$default_system, last_user=-1) -%}
{%- set loop_messages = messages -%}
{%- if messages and messages[0].role == 'system' -%}
    {%- set loop_messages = messages[1:] -%}
    {%- set ns.system = $system_content -%}
{%- endif -%}
{%- if tools -%}
    {%- set tools_text -%}
        $tools_open
        {%- for tool in tools -%}
            {%- set spec = tool.function if tool.function is defined else tool -%}
            {%- if not loop.first -%}$tool_sep{%- endif -%}
            $tool_entry
        {%- endfor -%}
        $tools_close
    {%- endset -%}
    {%- set ns.system = ns.system + '\n\n' + tools_text if ns.system else tools_text -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- set fold = $fold -%}
$prefix
{%- if ns.system and not fold -%}$system_block{%- endif -%}
{%- for message in loop_messages -%}
    {%- set content = message.content or '' -%}
    {%- if message.role == 'user' -%}
        $strip_user
        $fold_user
        $user
    {%- elif message.role == 'assistant' -%}
        $assistant
        $strip_assistant
        $think
        {%- if message.tool_calls -%}
            {%- set calls -%}
                {%- for call in message.tool_calls -%}
                    {%- set call = call.function if call.function is defined else call -%}
                    {%- set arguments = call.arguments if call.arguments is string else call.arguments | tojson -%}
                    {%- if not loop.first -%}$call_sep{%- endif -%}
                    $call
                {%- endfor -%}
            {%- endset -%}
            {%- set content = (content + '\n' if content else '') + $calls -%}
        {%- endif -%}
        {%- generation -%}$reply{%- endgeneration -%}
        $separator
    {%- elif message.role == 'tool' -%}
        $strip_tool
        {%- if loop.first or loop.previtem.role != 'tool' -%}$tool_open{%- else -%}$result_sep{%- endif -%}
        $result
        {%- if loop.last or loop.nextitem.role != 'tool' -%}$tool_close{%- endif -%}
    {%- elif message.role == 'system' -%}
        {{- raise_exception('A system message may only come first.') -}}
    {%- else -%}
        {{- raise_exception('Unknown role: ' + message.role) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}$generation$suffix{%- endif -%}
""")


class TokenizerTemplate:
    """The tokenizer's own chat_template behind the `Template` interface (`--template_name auto`)."""

    name = "auto"

    def __init__(self, tokenizer: Any, tool_format: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "The tokenizer has no chat_template, so the chat format cannot be taken from it. Pass "
                f"--template_name <one of: {', '.join(sorted(TEMPLATES))}>."
            )
        if tool_format is not None and tool_format not in TOOL_FORMATS:
            raise ValueError(f"Unknown tool format {tool_format!r}. Choose one of: {', '.join(TOOL_FORMATS)}.")
        self.tokenizer = tokenizer
        self.tool_format = tool_format

    def _as_text(self, messages: list[Message], tools: list[dict] | None) -> tuple[list[Message], None]:
        """With a tool format, tools, calls and results become plain text (MedicalGPT's --tool_format with the
        tokenizer's template): the tool list joins the system prompt, calls join the answer, and results come
        back as a user turn. Without one, the tokenizer's template renders them itself."""
        if self.tool_format is None:
            return messages, tools
        fmt = TOOL_FORMATS[self.tool_format]
        out: list[Message] = []
        listing = tools_text(self.tool_format, tools)
        if listing:
            if messages and messages[0]["role"] == "system":
                out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{listing}"})
                messages = messages[1:]
            else:
                out.append({"role": "system", "content": listing})
        for message in messages:
            if message["role"] == "tool":
                result = fill(fmt.result, content=message.get("content") or "")
                if out and out[-1].get("from_tool"):
                    out[-1]["content"] += fmt.result_sep + result
                else:
                    out.append({"role": "user", "content": result, "from_tool": True})
            elif message["role"] == "assistant" and message.get("tool_calls"):
                content = answer_text(self.tool_format, message.get("content") or "", message["tool_calls"])
                out.append({"role": "assistant", "content": content})
            else:
                out.append(message)
        return [{k: v for k, v in m.items() if k != "from_tool"} for m in out], None

    @property
    def stop_words(self) -> tuple[str, ...]:
        found = (s for s in KNOWN_STOPS if s in self.tokenizer.chat_template)
        return tuple(dict.fromkeys(s for s in (self.tokenizer.eos_token, *found) if s))

    def to_jinja(self) -> str:
        return self.tokenizer.chat_template

    def render(
        self, messages: list[Message], tools: list[dict] | None = None, add_generation_prompt: bool = False
    ) -> str:
        messages, tools = self._as_text(messages, tools)
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def segments(
        self, messages: list[Message], tools: list[dict] | None = None, add_generation_prompt: bool = False
    ) -> list[tuple[str, bool]]:
        """Supervised spans found without assuming the template is prefix-preserving: each assistant answer is
        marked with a sentinel, rendered once, and supervised from there up to and including the next stop string."""
        messages, tools = self._as_text(messages, tools)
        text = self.render(messages, tools, add_generation_prompt)
        starts = self._answer_starts(messages, tools, add_generation_prompt, text)
        segments: list[tuple[str, bool]] = []
        position = 0
        for start in starts:
            ends = [i + len(s) for s in self.stop_words if (i := text.find(s, start)) >= 0]
            if start < position or not ends:
                raise ValueError(self._cannot("an assistant turn has no stop string after it"))
            end = min(ends)
            segments += [(text[position:start], False), (text[start:end], True)]
            position = end
        segments.append((text[position:], False))
        return [(piece, supervised) for piece, supervised in segments if piece]

    def _answer_starts(
        self, messages: list[Message], tools: list[dict] | None, add_generation_prompt: bool, text: str
    ) -> list[int]:
        """Where each assistant turn's own output begins in `text`."""
        marked = [dict(m) for m in messages]
        empty = []
        for i, message in enumerate(marked):
            if message["role"] != "assistant":
                continue
            content = message.get("content") or ""
            if content:
                # After any leading whitespace, so templates that trim the content still keep the sentinel first.
                lead = len(content) - len(content.lstrip())
                message["content"] = content[:lead] + f"\x00{i}\x00" + content[lead:]
            else:
                empty.append(i)
        rendered = self.render(marked, tools, add_generation_prompt)
        starts: dict[int, int] = {}
        removed = 0
        for match in _SENTINEL.finditer(rendered):
            starts[int(match.group(1))] = match.start() - removed
            removed += len(match.group(0))
        clean = _SENTINEL.sub("", rendered)
        wanted = [i for i, m in enumerate(marked) if m["role"] == "assistant" and i not in empty]
        if clean != text or sorted(starts) != wanted:
            raise ValueError(self._cannot("marking the assistant answers changes how the template renders"))
        for i in empty:
            starts[i] = self._empty_answer_start(messages, i, tools, add_generation_prompt, text)
        return [starts[i] for i in sorted(starts)]

    def _empty_answer_start(
        self, messages: list[Message], index: int, tools: list[dict] | None, add_generation_prompt: bool, text: str
    ) -> int:
        """An assistant message without text (tool calls only): render it once more as a bare one-character
        answer; the output of the turn starts where that render departs from the real one."""
        variant = [dict(m) for m in messages]
        variant[index] = {"role": "assistant", "content": "\x01"}
        other = self.render(variant, tools, add_generation_prompt)
        start = len(os.path.commonprefix([text, other]))
        if other[start : start + 1] != "\x01":
            raise ValueError(self._cannot("an assistant turn without text could not be located"))
        return start

    @staticmethod
    def _cannot(reason: str) -> str:
        return (
            f"auto mode cannot derive assistant masks for this chat_template ({reason}); pass "
            f"--template_name <one of: {', '.join(sorted(TEMPLATES))}>."
        )


TEMPLATES: dict[str, Template] = {}


def register(template: Template) -> Template:
    """Add a template to the registry; names are unique. Example::

    register(Template(name="my_chat", user="User: {content}\\n", assistant="Bot: ", stop="</s>", separator="\\n"))
    get_template("my_chat").render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    # 'User: Hi\\nBot: '
    """
    if template.name in TEMPLATES:
        raise ValueError(f"Template {template.name!r} is already registered.")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str | None, tokenizer: Any = None) -> Template | TokenizerTemplate:
    """A registered template, or the tokenizer's own chat_template for None/"auto" (the only case that uses
    `tokenizer`; named templates are the same whatever the model)."""
    if name is None or name == "auto":
        if tokenizer is None:
            raise ValueError("--template_name auto needs a tokenizer to take the chat_template from.")
        return TokenizerTemplate(tokenizer)
    if name not in TEMPLATES:
        raise ValueError(f"Unknown template {name!r}. Choose one of: {', '.join(sorted(TEMPLATES))}.")
    return TEMPLATES[name]


def with_tool_format(template: Template | TokenizerTemplate, tool_format: str) -> Template | TokenizerTemplate:
    """The same template writing tools, calls and results in another of the TOOL_FORMATS. For the tokenizer's own
    template (auto) they are written as plain text into the messages, as MedicalGPT's --tool_format did."""
    tool_format = TOOL_FORMAT_ALIASES.get(tool_format, tool_format)
    if isinstance(template, TokenizerTemplate):
        return TokenizerTemplate(template.tokenizer, tool_format)
    return replace(template, tool_format=tool_format)


def split_answer(template, prompt: list[dict], answer: dict, tools: list | None) -> tuple[str, str]:
    """(prompt text, answer text) where the answer text is the trained part: the answer and its stop string."""
    segments = template.segments(prompt + [answer], tools)
    last = max(i for i, (_, supervised) in enumerate(segments) if supervised)
    return "".join(text for text, _ in segments[:last]), segments[last][0]


# --- the registry ----------------------------------------------------------------------------------------------
# Families with an official chat template render exactly like it (tests/test_template.py proves it); the others
# keep MedicalGPT's formats with its defects fixed: a user-given system prompt keeps its role wrapper, history
# answers end with the same stop string as in training, no stray separators.

_CHATML = dict(
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant="<|im_start|>assistant\n",
    stop="<|im_end|>",
    separator="\n",
    tool_format="qwen",
)
_EMPTY_THINK = "<think>\n\n</think>\n\n"
_QWEN3 = dict(_CHATML, empty_think=_EMPTY_THINK)
# Qwen3.5 trims every message and keeps the empty think block on all answers after the last user message.
_QWEN3_5 = dict(_QWEN3, strip=ROLES, empty_think_last_only=False)
_LLAMA2 = dict(
    user="<s>[INST] {content} [/INST]",
    assistant="",
    reply=" {content} ",
    stop="</s>",
    system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    fold_system=True,
    strip=("user", "assistant"),
)
_PHI3 = dict(
    system="<|system|>\n{content}<|end|>\n",
    user="<|user|>\n{content}<|end|>\n",
    assistant="<|assistant|>\n",
    stop="<|end|>",
    separator="\n",
    suffix="<|endoftext|>",
    extra_stops=("<|endoftext|>",),
)
# Gemma 1/2 reject system messages; folding them into the first user turn like Gemma 3 is the usual fix.
_GEMMA = dict(
    prefix="<bos>",
    user="<start_of_turn>user\n{content}<end_of_turn>\n",
    assistant="<start_of_turn>model\n",
    stop="<end_of_turn>",
    separator="\n",
    system="{content}\n\n",
    fold_system=True,
    strip=("user", "assistant"),
)
_HUMAN_CHAT = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
_LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)

for _template in (
    # MedicalGPT's names.
    Template(
        name="vicuna",
        user="USER: {content} ",
        assistant="ASSISTANT:",
        reply=" {content}",
        stop="</s>",
        system="{content} ",
        default_system="A chat between a curious user and an artificial intelligence "
        "assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
    ),
    Template(name="base", user="{content}", assistant="", stop="</s>"),
    Template(
        name="alpaca",
        user="### Instruction:\n{content}\n\n",
        assistant="### Response:\n",
        stop="</s>",
        separator="\n\n",
        system="{content}\n\n",
        default_system="Below is an instruction that describes a "
        "task. Write a response that appropriately completes the request.",
    ),
    Template(
        name="baichuan", user="<reserved_102>{content}", assistant="<reserved_103>", stop="</s>", system="{content}"
    ),
    Template(
        name="baichuan2", user="<reserved_106>{content}", assistant="<reserved_107>", stop="</s>", system="{content}"
    ),
    Template(name="ziya", user="<human>:{content}\n", assistant="<bot>:", stop="</s>", separator="\n"),
    Template(name="linly", user="User: {content}\n", assistant="Bot: ", stop="</s>", separator="\n"),
    Template(name="chatglm", user="问：{content}\n", assistant="答：", stop="</s>", separator="\n"),
    Template(
        name="chatglm2",
        user="问：{content}\n\n",
        assistant="答：",
        stop="</s>",
        separator="\n\n",
        system="{content}\n\n",
    ),
    Template(
        name="chatglm3",
        system="<|system|>\n{content}",
        user="<|user|>\n{content}",
        assistant="<|assistant|>",
        stop="</s>",
        separator="\n",
        extra_stops=("<|user|>", "<|observation|>"),
        tool_format="glm4",
    ),
    Template(
        name="phoenix",
        user="Human: <s>{content}</s>",
        assistant="Assistant: ",
        stop="</s>",
        system="{content}\n\n",
        default_system=_HUMAN_CHAT,
    ),
    Template(
        name="belle",
        user="Human: {content}\n\n",
        assistant="Belle: ",
        stop="</s>",
        separator="\n\n",
        system="{content}\n\n",
    ),
    Template(
        name="aquila",
        user="Human: {content}###",
        assistant="Assistant:",
        stop="</s>",
        separator="###",
        system="{content}###",
        default_system=_HUMAN_CHAT,
    ),
    Template(
        name="intern",
        system="<|System|>:{content}\n",
        user="<|User|>:{content}<eoh>\n",
        assistant="<|Bot|>:",
        stop="<eoa>",
        separator="\n",
    ),
    Template(name="intern2", **_CHATML, default_system="You are an AI assistant whose name is InternLM (书生·浦语)."),
    Template(
        name="starchat",
        system="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n",
        assistant="<|assistant|>\n",
        stop="<|end|>",
        separator="\n",
    ),
    Template(name="llama2", **_LLAMA2, default_system=_LLAMA2_SYSTEM),
    Template(name="llama2-zh", **_LLAMA2, default_system="You are a helpful assistant. 你是一个乐于助人的助手。"),
    # Official Llama 3 template: BOS, every message trimmed.
    Template(
        name="llama3",
        prefix="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stop="<|eot_id|>",
        tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
        strip=ROLES,
        extra_stops=("<|eom_id|>",),
        tool_format="llama3",
    ),
    # Mistral-Instruct v0.x: the system prompt goes inside the first [INST].
    Template(
        name="mistral",
        prefix="<s>",
        user="[INST] {content} [/INST]",
        assistant="",
        reply=" {content}",
        stop="</s>",
        system="{content}\n\n",
        fold_system=True,
        tool_format="mistral",
    ),
    Template(name="xverse", user="Human: {content}\n\n", assistant="Assistant: ", stop="</s>", system="{content}\n\n"),
    Template(name="chatml", **_CHATML),
    Template(
        name="deepseek",
        prefix="<｜begin▁of▁sentence｜>",
        system="{content}\n\n",
        user="User: {content}\n\n",
        assistant="Assistant:",
        reply=" {content}",
        stop="<｜end▁of▁sentence｜>",
    ),
    # Official DeepSeek-V3 template: raw system text after BOS; the generation prompt opens a think block.
    Template(
        name="deepseek3",
        prefix="<｜begin▁of▁sentence｜>",
        system="{content}",
        user="<｜User｜>{content}",
        assistant="<｜Assistant｜>",
        stop="<｜end▁of▁sentence｜>",
        generation_suffix="<think>\n",
    ),
    Template(
        name="deepseekcoder",
        prefix="<｜begin▁of▁sentence｜>",
        system="{content}\n",
        user="### Instruction:\n{content}\n",
        assistant="### Response:\n",
        reply="{content}\n",
        stop="<|EOT|>",
        separator="\n",
        default_system="You are an AI programming assistant, utilizing the Deepseek Coder "
        "model, developed by Deepseek Company, and you only answer questions related to computer science. For "
        "politically sensitive questions, security and privacy issues, and other non-computer science "
        "questions, you will refuse to answer",
    ),
    Template(name="yi", **_CHATML),
    # Orion's generation prompt itself ends with EOS.
    Template(
        name="orion", user="Human: {content}\n\n", assistant="Assistant: </s>", stop="</s>", system="{content}\n\n"
    ),
    # Official Cohere (Aya) template: the system prompt is kept as given, user and answers are stripped.
    Template(
        name="cohere",
        prefix="<BOS_TOKEN>",
        system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
        user="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
        assistant="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        stop="<|END_OF_TURN_TOKEN|>",
        strip=("user", "assistant"),
    ),
    Template(name="qwen", **_CHATML, default_system="You are a helpful assistant."),
    Template(name="qwen3", **_QWEN3),
    Template(name="qwen3_nothink", **_QWEN3, generation_suffix=_EMPTY_THINK),
    Template(name="qwen3_5", **_QWEN3_5, generation_suffix="<think>\n"),
    Template(name="qwen3_5_nothink", **_QWEN3_5, generation_suffix=_EMPTY_THINK),
    # Current families, each matching its official template.
    Template(
        name="qwen2.5",
        **_CHATML,
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    ),
    Template(
        name="smollm2",
        **_CHATML,
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    ),
    Template(name="phi3", **_PHI3),
    Template(name="phi3.5", **_PHI3),
    Template(name="gemma", **_GEMMA),
    Template(name="gemma3", **_GEMMA),
):
    register(_template)
