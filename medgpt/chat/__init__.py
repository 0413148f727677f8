"""Chat formats: templates (the registry, rendering, supervision masks, Jinja export, the tokenizer's own template
in auto mode), tool formats, and the template a saved model records.

    from medgpt.chat import get_template
    get_template("qwen").render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
"""

from medgpt.chat.config import TEMPLATE_FILE, read_template_name, save_template
from medgpt.chat.templates import (
    KNOWN_STOPS,
    TEMPLATES,
    Template,
    TokenizerTemplate,
    get_template,
    register,
    split_answer,
    with_tool_format,
)
from medgpt.chat.tools import (
    TOOL_FORMAT_ALIASES,
    TOOL_FORMATS,
    Message,
    ToolFormat,
    answer_text,
    parse_tool_calls,
    tools_text,
)

__all__ = [
    "KNOWN_STOPS", "TEMPLATES", "TEMPLATE_FILE", "TOOL_FORMATS", "TOOL_FORMAT_ALIASES", "Message", "Template",
    "TokenizerTemplate", "ToolFormat", "answer_text", "get_template", "parse_tool_calls", "read_template_name",
    "register", "save_template", "split_answer", "tools_text", "with_tool_format",
]  # fmt: skip
