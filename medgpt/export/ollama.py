"""An Ollama Modelfile for an exported GGUF: our chat template as a Go text/template, the stop strings, the default
system prompt and the model's sampling defaults (tools/export_gguf.py).

Ollama renders `.System` (every system message joined, or the Modelfile's SYSTEM when the request has none) and
`.Messages` (all messages, system ones included, with consecutive same-role messages merged). The template below
writes exactly what `Template.render(messages, add_generation_prompt=True)` writes for a conversation of system,
user, assistant and tool-result turns (tests/test_export.py runs it in Go's text/template). Tool calls and the tool
list are not rendered (Ollama parses them its own way; serve tools with openai_api.py), and Go templates cannot
trim, so templates that strip message whitespace (llama3, gemma, ...) render contents as given.
"""

import json

from medgpt.chat import Template
from medgpt.chat.tools import TOOL_FORMATS
from medgpt.errors import UserError

# generation_config.json field -> Ollama PARAMETER name
SAMPLING_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
}


def _text(value: str) -> str:
    """A literal in a Go template (a JSON string is a valid Go string literal; nothing in it is read as markup)."""
    return "{{ " + json.dumps(value, ensure_ascii=False) + " }}" if value else ""


def _line(action: str) -> str:
    """A top-level action that also trims the line break before it (the template is laid out one part a line)."""
    return "{{-" + action[2:] if action else ""


def _halves(fmt: str) -> tuple[str, str]:
    before, after = fmt.split("{content}")
    return _text(before), _text(after)


def go_template(template: Template) -> str:
    """`template` as a Go text/template over Ollama's `.System` and `.Messages`."""
    system_open, system_close = _halves(template.system)
    user_open, user_close = _halves(template.user)
    reply_open, reply_close = _halves(template.reply)
    tool_open, tool_close = _halves(template.tool or template.user)
    fmt = TOOL_FORMATS[template.tool_format]
    result_open, result_close = _halves(fmt.result)
    system_block = f"{system_open}{{{{ $system }}}}{system_close}"
    if template.fold_system:  # the system block opens the first user turn
        top, in_user = "", f'{{{{- if $system }}}}{system_block}{{{{- $system = "" }}}}{{{{- end }}}}'
    else:
        top, in_user = f"{{{{- if $system }}}}{system_block}{{{{- end }}}}", ""
    close_tools = f'{{{{- if eq $previous "tool" }}}}{tool_close}{{{{- end }}}}'
    lines = [
        f"{{{{- /* chat format {template.name}, written by medgpt's tools/export_gguf.py */ -}}}}",
        "{{- $system := .System }}",
        '{{- $previous := "" }}',
        _line(_text(template.prefix)),
        top,
        "{{- range .Messages }}",
        '{{- if eq .Role "user" }}' + close_tools + user_open + in_user + "{{ .Content }}" + user_close,
        '{{- else if eq .Role "assistant" }}'
        + close_tools
        + _text(template.assistant)
        + reply_open
        + "{{ .Content }}"
        + reply_close
        + _text(template.stop)
        + _text(template.separator),
        '{{- else if eq .Role "tool" }}'
        + f'{{{{- if eq $previous "tool" }}}}{_text(fmt.result_sep)}{{{{- else }}}}{tool_open}{{{{- end }}}}'
        + result_open
        + "{{ .Content }}"
        + result_close,
        "{{- end }}",
        '{{- if ne .Role "system" }}{{ $previous = .Role }}{{ end }}',
        "{{- end }}",
        close_tools,
        _line(_text(template.assistant + template.generation_suffix)),
    ]
    return "\n".join(line for line in lines if line)


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise UserError(f"the {what} holds three double quotes in a row, which an Ollama Modelfile cannot quote.")
    return f'"""{value}"""'


def modelfile(gguf_path: str, template: Template, generation: dict, context: int | None) -> str:
    """The Modelfile text: FROM the GGUF (a path relative to the Modelfile), TEMPLATE, SYSTEM, stop strings and
    sampling defaults."""
    lines = [f"FROM ./{gguf_path}", f"TEMPLATE {_quoted(go_template(template), 'chat template')}"]
    if template.default_system:
        lines.append(f"SYSTEM {_quoted(template.default_system, 'default system prompt')}")
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in template.stop_words]
    for field, parameter in SAMPLING_PARAMETERS.items():
        if generation.get(field) is not None and generation.get("do_sample", True):
            lines.append(f"PARAMETER {parameter} {generation[field]}")
    if context:
        lines.append(f"PARAMETER num_ctx {context}")
    return "\n".join(lines) + "\n"
