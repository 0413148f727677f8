"""template.py: parity with official chat templates, to_jinja round trips, supervision masks, auto mode."""

import importlib.resources
import os
from dataclasses import replace
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from tokenizers import Regex, Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from medgpt.chat import (  # noqa: E402
    TEMPLATES,
    TOOL_FORMATS,
    Template,
    TokenizerTemplate,
    get_template,
    register,
    with_tool_format,
)

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"


def official(name: str) -> str:
    """An official chat template: TRL ships most of them, the others are vendored under tests/fixtures."""
    vendored = FIXTURES / f"{name}.jinja"
    if vendored.exists():
        return vendored.read_text(encoding="utf-8")
    return (importlib.resources.files("trl") / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


@cache
def tiny_tokenizer(
    chat_template: str | None = None, eos_token: str = "</s>", bos_token: str | None = None
) -> PreTrainedTokenizerFast:
    """A one-word tokenizer: enough for apply_chat_template, which only renders text here."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token=eos_token, bos_token=bos_token
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def apply(chat_template: str, messages, add_generation_prompt=False, tools=None, **kwargs) -> str:
    return tiny_tokenizer().apply_chat_template(
        messages,
        chat_template=chat_template,
        tools=tools,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )


def user(text):
    return {"role": "user", "content": text}


def assistant(text, tool_calls=None):
    message = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS = {
    "single": [user("What is hypertension?"), assistant("Blood pressure that stays at or above 130/80 mmHg.")],
    "multi": [
        user("I have a headache."),
        assistant("How long has it lasted?"),
        user("Two days, with a fever."),
        assistant("Take your temperature and rest."),
        user("It is 39 °C now."),
        assistant("Please see a doctor today."),
    ],
    "chinese": [
        user("我最近经常头痛，晚上也睡不好，应该怎么办？"),
        assistant("头痛伴失眠常与压力和作息有关。建议规律作息、减少咖啡因；若持续两周以上，请到神经内科就诊。"),
        user("需要做什么检查？"),
        assistant("医生可能会安排血压测量、血常规，必要时做头颅CT或磁共振。"),
    ],
    # Whitespace around the text shows which parts a template strips.
    "padded": [
        user("  Is aspirin safe?\n"),
        assistant("\nUsually, at low doses.  "),
        user(" And ibuprofen? "),
        assistant(" Also usually. \n"),
    ],
}
SYSTEMS = {"en": "You are a careful medical assistant.", "zh": "你是一名专业的医生，请用中文回答。"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_temperature",
        "description": "Body temperature of a patient",
        "parameters": {"type": "object", "properties": {"patient": {"type": "string"}}, "required": ["patient"]},
    },
}
TOOL_CHAT = [
    user("What are the temperatures of patients 7 and 9?"),
    assistant("", [call("get_temperature", patient="7"), call("get_temperature", patient="9")]),
    {"role": "tool", "content": "38.5"},
    {"role": "tool", "content": "36.9"},
    assistant("Patient 7 has a fever (38.5 °C); patient 9 is normal.", [call("notify", ward="B", urgent=True)]),
    {"role": "tool", "content": '{"sent": true}'},
    assistant("I have notified ward B."),
]


def chats(with_system: bool = True):
    """(id, messages) for every conversation, with and without each system prompt."""
    for name, messages in CONVERSATIONS.items():
        yield name, messages
        if with_system:
            key = "zh" if name == "chinese" else "en"
            yield f"{name}+system", [{"role": "system", "content": SYSTEMS[key]}, *messages]


# template name -> (official template, extra variables it reads, whether it takes a system message)
PARITY = {
    "qwen2.5": ("qwen2_5", {}, True),
    "qwen3": ("qwen3", {}, True),
    "qwen3_nothink": ("qwen3", {"enable_thinking": False}, True),
    "qwen3_5": ("qwen3_5_think", {}, True),
    "qwen3_5_nothink": ("qwen3_5_nothink", {}, True),
    "llama3": ("llama3", {"bos_token": "<|begin_of_text|>"}, True),
    "phi3": ("phi3", {"eos_token": "<|endoftext|>"}, True),
    "phi3.5": ("phi3_5", {"eos_token": "<|endoftext|>"}, True),
    "gemma": ("gemma", {"bos_token": "<bos>"}, False),
    "gemma3": ("gemma3", {"bos_token": "<bos>"}, True),
    "deepseek3": ("deepseekv3", {"bos_token": "<｜begin▁of▁sentence｜>"}, True),
    "cohere": ("cohere", {"bos_token": "<BOS_TOKEN>"}, True),
    "smollm2": ("smollm2", {}, True),
    "chatml": ("smollm2", {}, True),  # with a system prompt SmolLM2's template is plain ChatML
}


@pytest.mark.parametrize("name", sorted(PARITY))
def test_renders_like_the_official_template(name):
    source, variables, takes_system = PARITY[name]
    template, jinja = get_template(name), official(source)
    for chat_id, messages in chats(with_system=takes_system):
        if name == "chatml" and "system" not in chat_id:
            continue
        assert template.render(messages) == apply(jinja, messages, **variables), chat_id
        prompt = messages[:-1]
        assert template.render(prompt, add_generation_prompt=True) == apply(jinja, prompt, True, **variables), chat_id


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3", "qwen3_nothink"])
def test_tools_render_like_the_official_template(name):
    source, variables, _ = PARITY[name]
    for messages in (TOOL_CHAT, [{"role": "system", "content": SYSTEMS["en"]}, *TOOL_CHAT]):
        for end in (len(messages), len(messages) - 1, 2):  # full chat, after a tool result, after a call
            chat = messages[:end]
            expected = apply(official(source), chat, tools=[WEATHER_TOOL], **variables)
            assert get_template(name).render(chat, tools=[WEATHER_TOOL]) == expected


def roundtrip_cases():
    for chat_id, messages in chats():
        yield chat_id, messages, None
    yield "tools", TOOL_CHAT, [WEATHER_TOOL, {"name": "notify", "parameters": {"type": "object"}}]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_to_jinja_renders_like_render(name):
    template = get_template(name)
    for tool_format in sorted(TOOL_FORMATS):
        variant = with_tool_format(template, tool_format)
        jinja = variant.to_jinja()
        for chat_id, messages, tools in roundtrip_cases():
            if tools is None and tool_format != template.tool_format:
                continue  # the tool format only matters for chats with tools
            for end in (len(messages), len(messages) - 1):
                chat = messages[:end]
                for generation in (False, True):
                    expected = variant.render(chat, tools, generation)
                    assert apply(jinja, chat, generation, tools) == expected, (chat_id, tool_format, end, generation)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_to_jinja_generation_markers_match_segments(name):
    """transformers' return_assistant_tokens_mask, read from the {% generation %} markers, trains the same
    characters as segments()."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    template = get_template(name)
    for messages, tools in ((CONVERSATIONS["multi"], None), (TOOL_CHAT, [WEATHER_TOOL])):
        encoded = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=template.to_jinja(),
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        expected = [int(flag) for text, flag in template.segments(messages, tools) for _ in text]
        assert encoded["assistant_masks"] == expected


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_segments_supervise_exactly_the_answers_and_stop_strings(name):
    template = get_template(name)
    for chat_id, messages, tools in roundtrip_cases():
        for generation in (False, True):
            segments = template.segments(messages, tools, generation)
            assert "".join(text for text, _ in segments) == template.render(messages, tools, generation)
            supervised = [text for text, flag in segments if flag]
            answers = [m["content"] for m in messages if m["role"] == "assistant"]
            assert len(supervised) == len(answers), chat_id
            if tools is None:
                bodies = [a.strip() if "assistant" in template.strip else a for a in answers]
                if template.empty_think:  # qwen3 drops newlines between its think block and the last answer
                    bodies[-1] = bodies[-1].lstrip("\n")
                assert supervised == [template.reply.replace("{content}", b) + template.stop for b in bodies]
            prompts = [m["content"].strip() for m in messages if m["role"] in ("system", "user")]
            assert not any(p in text for p in prompts for text in supervised), chat_id


def test_segments_of_a_chatml_chat():
    messages = [{"role": "system", "content": "S"}, *CONVERSATIONS["multi"]]
    segments = get_template("qwen").segments(messages)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [text for text, flag in segments if flag] == [a + "<|im_end|>" for a in answers]
    assert segments[0] == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nI have a headache.<|im_end|>\n<|im_start|>assistant\n",
        False,
    )
    assert segments[-1] == ("\n", False)


def test_tool_calls_are_supervised_and_tool_results_are_not():
    segments = get_template("qwen2.5").segments(TOOL_CHAT, [WEATHER_TOOL])
    supervised = [text for text, flag in segments if flag]
    assert supervised[0] == (
        '<tool_call>\n{"name": "get_temperature", "arguments": {"patient": "7"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_temperature", "arguments": {"patient": "9"}}\n</tool_call>'
        "<|im_end|>"
    )
    assert supervised[1].startswith("Patient 7 has a fever (38.5 °C); patient 9 is normal.\n<tool_call>\n")
    assert not any("<tool_response>" in text or 'get_temperature", "description' in text for text in supervised)


PREFIX_PRESERVING = sorted(n for n, t in TEMPLATES.items() if not (t.empty_think or t.generation_suffix or t.suffix))


@pytest.mark.parametrize("name", PREFIX_PRESERVING)
def test_earlier_turns_render_the_same_when_a_chat_grows(name):
    template = get_template(name)
    messages = CONVERSATIONS["multi"]
    full = template.render(messages)
    for end in range(1, len(messages)):
        assert full.startswith(template.render(messages[:end])), end
        if messages[end - 1]["role"] == "user":
            # Prompting from a history renders that history exactly as training saw it.
            assert full.startswith(template.render(messages[:end], add_generation_prompt=True)), end


def test_prefix_preserving_covers_the_plain_templates():
    assert {"qwen", "qwen2.5", "llama3", "chatml", "llama2", "mistral", "vicuna", "gemma3"} <= set(PREFIX_PRESERVING)
    assert not {"qwen3", "qwen3_5", "deepseek3", "phi3"} & set(PREFIX_PRESERVING)


def test_qwen3_writes_an_empty_think_block_only_in_the_last_answer():
    qwen3 = get_template("qwen3")
    messages = CONVERSATIONS["multi"]
    text = qwen3.render(messages)
    assert text.count("<think>\n\n</think>\n\n") == 1
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nPlease see a doctor today.<|im_end|>\n")
    assert not text.startswith(qwen3.render(messages[:2]))  # not prefix-preserving, like the official template
    assert qwen3.render(messages[:-1], add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    # The think block is a header: only the answer and <|im_end|> are trained.
    assert [t for t, flag in qwen3.segments(messages) if flag][-1] == "Please see a doctor today.<|im_end|>"


def test_nothink_variants_differ_from_the_thinking_ones():
    prompt = [user("头痛怎么办？")]
    for thinking, nothink in (("qwen3", "qwen3_nothink"), ("qwen3_5", "qwen3_5_nothink")):
        think_text = get_template(thinking).render(prompt, add_generation_prompt=True)
        nothink_text = get_template(nothink).render(prompt, add_generation_prompt=True)
        assert think_text != nothink_text
        assert nothink_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_custom_system_prompt_keeps_its_role_wrapper():
    messages = [{"role": "system", "content": "你是医生"}, user("头痛怎么办？")]
    expected = (
        "<|im_start|>system\n你是医生<|im_end|>\n<|im_start|>user\n头痛怎么办？<|im_end|>\n<|im_start|>assistant\n"
    )
    for name in ("qwen", "chatml", "intern2"):
        assert get_template(name).render(messages, add_generation_prompt=True) == expected, name
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
    assert get_template("qwen").render([user("Q")]) == default
    assert get_template("chatml").render([user("Q")]) == "<|im_start|>user\nQ<|im_end|>\n"


def test_history_answers_end_with_the_stop_string_at_inference():
    messages = CONVERSATIONS["multi"]
    for name in ("qwen", "yi"):
        prompt = get_template(name).render(messages[:-1], add_generation_prompt=True)
        assert "How long has it lasted?<|im_end|>\n<|im_start|>user\n" in prompt
        assert "<|im_end|>\n\n" not in prompt


def test_deepseekcoder_inserts_the_query():
    text = get_template("deepseekcoder").render([user("Write a BMI calculator.")], add_generation_prompt=True)
    assert "### Instruction:\nWrite a BMI calculator.\n### Response:\n" in text
    assert "{content}" not in text


def test_no_stray_end_token_after_the_system_text():
    messages = [{"role": "system", "content": "Be brief."}, user("Q1"), assistant("A1"), user("Q2")]
    vicuna = get_template("vicuna").render(messages, add_generation_prompt=True)
    assert vicuna == "Be brief. USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
    llama2 = get_template("llama2").render(messages, add_generation_prompt=True)
    assert llama2 == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
    for name in ("phoenix", "llama2-zh", "cohere", "aquila", "baichuan", "base"):
        assert "Be brief.</s>" not in get_template(name).render(messages), name
    assert get_template("mistral").render(messages) == "<s>[INST] Be brief.\n\nQ1 [/INST] A1</s>[INST] Q2 [/INST]"


def test_stop_words():
    assert get_template("qwen").stop_words == ("<|im_end|>",)
    assert get_template("llama3").stop_words == ("<|eot_id|>", "<|eom_id|>")
    assert "<|user|>" in get_template("chatglm3").stop_words


# --- auto mode ---------------------------------------------------------------------------------------------------


def test_auto_mode_masks_a_template_that_is_not_prefix_preserving():
    template = get_template("auto", tiny_tokenizer(official("qwen3"), "<|im_end|>"))
    assert isinstance(template, TokenizerTemplate) and template.name == "auto"
    messages = [{"role": "system", "content": "S"}, *CONVERSATIONS["multi"]]
    segments = template.segments(messages)
    assert "".join(text for text, _ in segments) == template.render(messages) == apply(official("qwen3"), messages)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [text for text, flag in segments if flag] == [a + "<|im_end|>" for a in answers]
    assert template.stop_words == ("<|im_end|>",)
    assert template.to_jinja() == official("qwen3")
    # Same masks as the named qwen3 template.
    assert segments == get_template("qwen3").segments(messages)


def test_auto_mode_handles_answers_that_are_only_tool_calls():
    template = get_template(None, tiny_tokenizer(official("qwen3"), "<|im_end|>"))
    for messages in (TOOL_CHAT, TOOL_CHAT[:2]):  # the call turn in the middle, then last (with a think block)
        segments = template.segments(messages, [WEATHER_TOOL])
        assert segments == get_template("qwen3").segments(messages, [WEATHER_TOOL])
        assert [t for t, flag in segments if flag][0].startswith('<tool_call>\n{"name": "get_temperature"')


def test_auto_mode_with_trimming_template_and_generation_prompt():
    template = get_template("auto", tiny_tokenizer(official("llama3"), "<|eot_id|>", "<|begin_of_text|>"))
    messages = CONVERSATIONS["padded"][:3]
    segments = template.segments(messages, add_generation_prompt=True)
    assert "".join(t for t, _ in segments) == template.render(messages, add_generation_prompt=True)
    assert [t for t, flag in segments if flag] == ["Usually, at low doses.<|eot_id|>"]


def test_auto_mode_refuses_templates_it_cannot_mask():
    with pytest.raises(ValueError, match="--template_name"):
        get_template("auto", tiny_tokenizer(None))
    with pytest.raises(ValueError, match="--template_name"):
        get_template("auto")
    clipping = "{% for m in messages %}{{ m.content[:4] }}</s>{% endfor %}"
    with pytest.raises(ValueError, match="auto mode cannot derive assistant masks.*--template_name"):
        get_template("auto", tiny_tokenizer(clipping)).segments(CONVERSATIONS["single"])


# --- registry ----------------------------------------------------------------------------------------------------


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as error:
        get_template("qwen4")
    assert ", ".join(sorted(TEMPLATES)) in str(error.value)


def test_register_rejects_duplicates_and_adds_new_templates():
    with pytest.raises(ValueError, match="already registered"):
        register(replace(get_template("qwen")))
    custom = Template(name="test_custom", user="User: {content}\n", assistant="Bot: ", stop="</s>", separator="\n")
    try:
        assert register(custom) is get_template("test_custom")
        assert custom.render([user("Hi")], add_generation_prompt=True) == "User: Hi\nBot: "
    finally:
        TEMPLATES.pop("test_custom")


def test_with_tool_format_returns_a_new_template():
    qwen = get_template("qwen")
    react = with_tool_format(qwen, "default")
    assert qwen.tool_format == "qwen" and react.tool_format == "default"
    text = react.render(TOOL_CHAT[:3], [WEATHER_TOOL])
    assert 'Action: get_temperature\nAction Input: {"patient": "7"}' in text
    assert "<|im_start|>user\nObservation: 38.5<|im_end|>" in text
    with pytest.raises(ValueError, match="Unknown tool format"):
        with_tool_format(qwen, "hermes")


def test_auto_mode_with_a_tool_format_writes_tools_as_text():
    """MedicalGPT's --tool_format with the tokenizer's template: tools, calls and results become plain text."""
    auto = with_tool_format(get_template("auto", tiny_tokenizer(official("qwen2_5"))), "default")
    chat = [
        user("Temperature of patient 7?"),
        assistant("", [call("get_temperature", patient="7")]),
        {"role": "tool", "content": "38.5"},
        assistant("The patient has a fever."),
    ]
    text = auto.render(chat, [WEATHER_TOOL])
    assert "You have access to the following tools:" in text and "> Tool Name: get_temperature" in text
    assert 'Action: get_temperature\nAction Input: {"patient": "7"}<|im_end|>' in text
    assert "<|im_start|>user\nObservation: 38.5<|im_end|>" in text
    trained = "".join(piece for piece, supervised in auto.segments(chat, [WEATHER_TOOL]) if supervised)
    assert trained == (
        'Action: get_temperature\nAction Input: {"patient": "7"}<|im_end|>The patient has a fever.<|im_end|>'
    )
    with pytest.raises(ValueError, match="Unknown tool format"):
        with_tool_format(get_template("auto", tiny_tokenizer(official("qwen3"))), "hermes")


def test_misplaced_system_and_unknown_roles_are_errors():
    messages = [user("Q"), {"role": "system", "content": "late"}]
    with pytest.raises(ValueError, match="only come first"):
        get_template("qwen").render(messages)
    with pytest.raises(ValueError, match="unknown role"):
        get_template("qwen").render([{"role": "observer", "content": "x"}])


def test_medicalgpt_qwen3_tool_format_names_map_to_qwen():
    assert with_tool_format(get_template("qwen3"), "qwen3").tool_format == "qwen"
    assert with_tool_format(get_template("qwen3_5"), "qwen3.5").tool_format == "qwen"
