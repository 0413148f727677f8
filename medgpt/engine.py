"""One chat engine behind every front end: the terminal chat and batch answers (inference.py), the OpenAI-compatible
server (openai_api.py) and the web page (gradio_demo.py).

The engine loads a model folder (or base + LoRA adapter) once, with the chat template it was trained with, and
answers conversations: `reply` (whole answers), `stream` (an iterator of text pieces; the joined pieces equal the
whole answer), `batch` (several conversations generated together) and `complete` (raw text continuation). It
prints nothing. Answers end at the template's stop strings (plus any extra ones) and tool calls the model writes are
parsed back into OpenAI `tool_calls`, the inverse of how training renders them. Given a knowledge base
(medgpt.retrieval), the engine grounds each conversation's last question in the passages it finds and every reply
carries them as `sources` (file, page or line, text, and whether the answer cited it).

    engine = ChatEngine.load("merged-sft")
    engine.reply([{"role": "user", "content": "What helps a fever?"}], temperature=0).text
    for piece in engine.stream(messages, max_new_tokens=128): print(piece, end="")
"""

import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, set_seed

from medgpt.chat import TOOL_FORMATS, parse_tool_calls
from medgpt.generation import cut_at_stop, generation_kwargs, prefilled_without_padding, stop_strings


@dataclass
class EngineArguments:
    """The model flags of every front end (inference.py, openai_api.py, gradio_demo.py), declared once."""

    base_model: str = field(metadata={"help": "Model folder or hub id (a merged model, or the base of --lora_model)."})
    lora_model: str | None = field(default=None, metadata={"help": "LoRA adapter folder, used without merging."})
    tokenizer_path: str | None = field(default=None, metadata={"help": "Tokenizer (default: adapter's, else base's)."})
    template_name: str | None = field(
        default=None,
        metadata={"help": "Chat template; default: the one the model was trained with, else its tokenizer's."},
    )
    stop_str: str = field(default="", metadata={"help": "Extra string that ends every answer."})
    resize_emb: bool = field(
        default=False,
        metadata={"help": "Grow the base embeddings to a larger tokenizer (vocabulary grown in training)."},
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the model in 8-bit (bitsandbytes)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the model in 4-bit (bitsandbytes)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})

    @property
    def name(self) -> str:
        """The model's display name: the adapter's folder, else the model's."""
        return Path(self.lora_model or self.base_model).name


@dataclass
class Reply:
    """A finished answer. finish_reason: "stop" (a stop string), "length" (max_new_tokens reached), "tool_calls"
    or "cancelled" (the caller stopped a stream)."""

    text: str
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sources: list[dict] = field(default_factory=list)  # with a knowledge base; empty = the documents had nothing


class PromptTooLong(ValueError):
    """The prompt plus the answer budget do not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens and up to {max_new_tokens} may be generated, but the model's "
            f"context holds {context}; shorten the conversation or lower max_tokens"
        )
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context


class _Cancelled(StoppingCriteria):
    """Ends the rows whose event is set (one event per row of the batch; None: never)."""

    def __init__(self, events: list[threading.Event | None]) -> None:
        self.events = events

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        flags = [event is not None and event.is_set() for event in self.events]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class _RowStreamer:
    """A `generate` streamer for a batch: each row's new text goes to its own queue (None: a row nobody reads),
    then None when the batch ends. A row's text is given out up to its last whole character."""

    def __init__(self, tokenizer, queues: list[queue.Queue | None]) -> None:
        self.tokenizer, self.queues = tokenizer, queues
        self.ids: list[list[int]] = [[] for _ in queues]
        self.given = [0] * len(queues)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.queues), -1)[:, -1].tolist()):
            if self.queues[row] is None:
                continue
            self.ids[row].append(token)
            text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > self.given[row]:  # not half a character
                self.queues[row].put(text[self.given[row] :])
                self.given[row] = len(text)

    def end(self) -> None:
        for rows in self.queues:
            if rows is not None:
                rows.put(None)


class TextStream:
    """Text pieces of one answer as they are generated; `reply` holds the finished answer once exhausted. A piece
    is only given out when no stop string can still begin in it, so the pieces never contain a stop string."""

    def __init__(self, pieces: Iterator[str], finish, stops: list[str], hold_all: bool) -> None:
        self._pieces, self._finish, self._stops, self._hold_all = pieces, finish, stops, hold_all
        self.reply: Reply | None = None
        self.passages: list = []  # the knowledge-base passages the answer was grounded in

    def __iter__(self) -> Iterator[str]:
        text, given = "", 0
        for piece in self._pieces:
            text += piece
            visible = text.lstrip()
            if any(stop in visible for stop in self._stops) or self._hold_all:
                continue  # the rest comes from the finished answer
            hold = max((len(s) - 1 for s in self._stops if s), default=0)  # a stop string may be starting
            safe = len(visible.rstrip()) if hold == 0 else max(0, min(len(visible) - hold, len(visible.rstrip())))
            if safe > given:
                yield visible[given:safe]
                given = safe
        self.reply = with_sources(self._finish(text), self.passages)
        if len(self.reply.text) > given:
            yield self.reply.text[given:]


def with_sources(reply: Reply, passages: list) -> Reply:
    """The reply with its passages as `sources`, each marked with whether the answer cited it."""
    if passages:
        from medgpt.retrieval.grounding import cited

        reply.sources = cited(reply.text, passages)
    return reply


class ChatEngine:
    def __init__(self, model, tokenizer, template, extra_stop: str = "", knowledge=None) -> None:
        self.model, self.tokenizer, self.template = model.eval(), tokenizer, template
        self.knowledge = knowledge  # a medgpt.retrieval.knowledge.KnowledgeBase, or None
        self.tokenizer.padding_side = "left"  # batches continue on the right
        self.stops = stop_strings(template, extra_stop)
        self.context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length

    @classmethod
    def from_args(cls, engine_args: EngineArguments, knowledge=None) -> "ChatEngine":
        options = asdict(engine_args)
        engine = cls.load(options.pop("base_model"), options.pop("lora_model"), options.pop("stop_str"), **options)
        engine.knowledge = knowledge
        return engine

    @classmethod
    def load(cls, base_model: str, lora_model: str | None = None, extra_stop: str = "", **load_kwargs) -> "ChatEngine":
        """A saved model folder, or a base model plus a LoRA adapter (see medgpt.model.load_saved)."""
        from medgpt.model import load_saved

        model, tokenizer, template = load_saved(base_model, lora_model, **load_kwargs)
        return cls(model, tokenizer, template, extra_stop)

    # ---------------------------------------------------------------- prompts

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The conversation in the model's chat format, ending with the header of the answer to write."""
        return self.template.render(messages, tools, add_generation_prompt=True)

    def ground(self, messages: list[dict]) -> tuple[list[dict], list]:
        """With a knowledge base: the conversation with its last user question replaced by the grounded question
        (numbered passages and the instruction to cite them), and those passages. Without one: unchanged, []."""
        if self.knowledge is None or not messages or messages[-1]["role"] != "user":
            return messages, []
        from medgpt.retrieval.grounding import grounded_question

        question = messages[-1]["content"]
        passages = self.knowledge.search(question)
        return [*messages[:-1], {**messages[-1], "content": grounded_question(question, passages)}], passages

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if self.context and prompt_tokens + max_new_tokens > self.context:
            raise PromptTooLong(prompt_tokens, max_new_tokens, self.context)

    # ---------------------------------------------------------------- answers

    def reply(self, messages: list[dict], tools: list[dict] | None = None, **sampling) -> Reply:
        messages, passages = self.ground(messages)
        return with_sources(self.complete(self.render(messages, tools), tools=tools, **sampling), passages)

    def stream(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        cancel: threading.Event | None = None,
        **sampling,
    ) -> TextStream:
        messages, passages = self.ground(messages)
        stream = self.complete_stream(self.render(messages, tools), tools=tools, cancel=cancel, **sampling)
        stream.passages = passages
        return stream

    def batch(self, conversations: list[list[dict]], tools: list[dict] | None = None, **sampling) -> list[Reply]:
        """Answers to several conversations, generated together (left-padded)."""
        grounded = [self.ground(c) for c in conversations]
        prompts = [self.render(c, tools) for c, _ in grounded]
        replies = self.complete_batch(prompts, [tools] * len(prompts), **sampling)
        return [with_sources(reply, passages) for reply, (_, passages) in zip(replies, grounded, strict=True)]

    def complete(self, prompt: str, tools: list[dict] | None = None, **sampling) -> Reply:
        """The model's continuation of `prompt` (already in chat format, or raw text), cut at the stops."""
        self.check_fits(self.count_tokens(prompt), sampling.get("max_new_tokens", 512))
        return self.complete_batch([prompt], [tools], **sampling)[0]

    def complete_batch(
        self,
        prompts: list[str],
        tools: list[list[dict] | None],
        limits: list[int] | None = None,
        streams: list[queue.Queue | None] | None = None,
        cancels: list[threading.Event | None] | None = None,
        **sampling,
    ) -> list[Reply]:
        """`complete` of several prompts in one left-padded `generate`, all with the same sampling settings. Each
        prompt may have its own answer budget (`limits`, else max_new_tokens): the batch runs to the largest, and
        each answer is cut at its own, as if generated alone (with greedy decoding, the same tokens). `streams`: a
        queue per row that receives its text as it is generated (then None); `cancels`: an event per row that ends
        it."""
        limits = limits or [sampling.get("max_new_tokens", 512)] * len(prompts)
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        stops, kwargs = self._settings({**sampling, "max_new_tokens": max(limits)})
        if streams is not None:
            kwargs["streamer"] = _RowStreamer(self.tokenizer, streams)
        if cancels is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancels)])
        try:
            output = self._generate(inputs, kwargs)
        finally:
            if streams is not None:
                kwargs["streamer"].end()  # readers stop waiting, also when generate failed
        width = inputs["input_ids"].shape[1]
        lengths = inputs["attention_mask"].sum(1).tolist()
        return [
            self._finish_ids(ids[width : width + limit], stops, row_tools, limit, length)
            for ids, length, limit, row_tools in zip(output, lengths, limits, tools, strict=True)
        ]

    def complete_stream(
        self, prompt: str, tools: list[dict] | None = None, cancel: threading.Event | None = None, **sampling
    ) -> TextStream:
        """`complete` as text pieces. Setting `cancel` stops the generation after the current token."""
        self.check_fits(self.count_tokens(prompt), sampling.get("max_new_tokens", 512))
        cancel = cancel or threading.Event()
        pieces: queue.Queue = queue.Queue()
        result: dict = {}

        def run() -> None:
            try:
                result["reply"] = self.complete_batch([prompt], [tools], None, [pieces], [cancel], **sampling)[0]
            except BaseException as err:  # surfaces in the reader's thread, from the finished stream
                result["error"] = err

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def reply() -> Reply:
            thread.join()
            if "error" in result:
                raise result["error"]
            return result["reply"]

        return self.text_stream(pieces, reply, cancel, tools, sampling)

    def text_stream(
        self, pieces: queue.Queue, reply, cancel: threading.Event, tools: list[dict] | None, sampling: dict
    ) -> TextStream:
        """The TextStream of one answer whose text arrives in `pieces` (then None) and whose finished Reply
        `reply()` returns once generation ended."""

        def finish(text: str) -> Reply:
            finished = reply()
            if cancel.is_set():
                finished.finish_reason = "cancelled"
            return finished

        # Stops that are special tokens never show in the decoded text; only the others need watching for.
        visible = [s for s in self._settings(sampling)[0] if s not in self.tokenizer.all_special_tokens]
        return TextStream(iter(pieces.get, None), finish, visible, hold_all=bool(tools))

    # ---------------------------------------------------------------- internals

    def _settings(self, sampling: dict) -> tuple[list[str], dict]:
        stops = [*self.stops, *(s for s in sampling.get("stop") or () if s)]
        kwargs = generation_kwargs(
            self.tokenizer,
            stops,
            sampling.get("max_new_tokens", 512),
            sampling.get("temperature", 0.7),
            sampling.get("top_p", 0.9),
            sampling.get("repetition_penalty", 1.0),
        )
        kwargs["seed"] = sampling.get("seed")
        return stops, kwargs

    def _generate(self, inputs, kwargs: dict) -> torch.Tensor:
        kwargs = dict(kwargs)
        seed = kwargs.pop("seed", None)
        if seed is not None:
            set_seed(seed)  # global RNG: reproducible when generations do not overlap
        inputs = inputs.to(self.model.device)
        with torch.no_grad():
            # Concurrent requests come in all lengths: on the CPU their prompts run ahead without the padding.
            ahead = prefilled_without_padding(self.model, inputs["input_ids"], inputs["attention_mask"])
            return self.model.generate(**inputs, **kwargs, past_key_values=ahead, use_cache=True)

    def _finish_ids(self, new_ids, stops, tools, max_new_tokens: int, prompt_tokens: int) -> Reply:
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id
        generated = len(new_ids) if pad is None else int((new_ids != pad).sum())  # batch rows end in padding
        stopped = any(stop in text for stop in stops) or generated < max_new_tokens
        reply = Reply(
            text=cut_at_stop(text, stops),
            finish_reason="stop" if stopped else "length",
            prompt_tokens=prompt_tokens,
            completion_tokens=min(generated, max_new_tokens),
        )
        if tools:
            names = {t.get("function", t).get("name") for t in tools}
            # A tokenizer's own template (auto mode) names no format: take the first that finds a call.
            for tool_format in [self.template.tool_format] if self.template.tool_format else TOOL_FORMATS:
                content, calls = parse_tool_calls(tool_format, reply.text, names)
                if calls:
                    reply.text, reply.tool_calls, reply.finish_reason = content, calls, "tool_calls"
                    break
        return reply
