"""The OpenAI-compatible HTTP API over the chat engine: request checks, responses, streaming, auth and back-pressure.

`create_app(engine, ...)` returns a FastAPI app with GET /health, GET /v1/models, POST /v1/chat/completions and
POST /v1/completions. Requests are checked field by field; anything malformed gets a 4xx with an OpenAI-style body
`{"error": {"message", "type", "param", "code"}}`. Generation runs on the batching queue's thread (medgpt.batching),
never on the event loop: concurrent requests, whole or streamed, are answered together in one `generate` of up to
`max_batch_size` prompts. At most `max_queue` requests wait beyond those; more get 429. A streaming client
that disconnects stops its generation after the current token. With a knowledge base, chat answers are grounded in
its passages and the response carries them in an extra top-level field `sources` (the last chunk of a stream), which
a plain OpenAI client ignores and `response.model_extra["sources"]` reads.
"""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from medgpt.batching import BatchingQueue
from medgpt.engine import ChatEngine, PromptTooLong, Reply, with_sources
from medgpt.formats import RowError, from_openai

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error"
        )
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# ---------------------------------------------------------------- request checks


def _number(body: dict, name: str, low: float, high: float, default: float, integer: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"'{name}' must be {kind} from {low} to {high}, got {value!r}", name)
    return value


def sampling_options(body: dict, engine: ChatEngine, default_max_tokens: int) -> dict[str, Any]:
    """max_tokens (or max_completion_tokens), temperature, top_p, stop and seed, checked; n must be 1."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    limit = engine.context or 1_000_000
    if max_tokens is not None:
        max_tokens = _number({name: max_tokens}, name, 1, limit, default_max_tokens, integer=True)
    if _number(body, "n", 1, 1, 1, integer=True) != 1:
        raise APIError(400, "only n=1 is supported", "n")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, "'stop' must be a string or a list of at most 4 non-empty strings", "stop")
    for name_ in ("presence_penalty", "frequency_penalty"):
        _number(body, name_, -2, 2, 0)
    if body.get("logprobs"):
        raise APIError(400, "logprobs are not supported by this server", "logprobs")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", "seed")
    return {
        "max_new_tokens": int(max_tokens or default_max_tokens),
        "temperature": float(_number(body, "temperature", 0, 2, 1.0)),
        "top_p": float(_number(body, "top_p", 0, 1, 1.0)) or 1e-6,
        "stop": stops,
        "seed": seed,
    }


def _text_content(content: Any, where: str) -> str | None:
    """Message content: a string, null, or a list of text parts (other parts are not supported)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(400, f"{where}: only text content is supported, got a {kind!r} part", where)
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{where}: content must be a string or a list of text parts", where)


def chat_messages(body: dict) -> tuple[list[dict], list[dict] | None]:
    """The conversation and tools of a chat request, in the toolkit's message format."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of messages", "messages")
    cleaned = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise APIError(400, f"{where}: role must be one of {', '.join(sorted(ROLES))}, got {role!r}", where)
        role = "system" if message["role"] == "developer" else message["role"]
        content = _text_content(message.get("content"), f"{where}.content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise APIError(400, f"{where}.content is missing", f"{where}.content")
        cleaned.append({**message, "role": role, "content": content})
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list)
        or not all(isinstance(t, dict) and isinstance(t.get("function", t).get("name"), str) for t in tools)
    ):
        raise APIError(400, "'tools' must be a list of {type: function, function: {name, parameters}}", "tools")
    if body.get("tool_choice") == "none":
        tools = None
    try:
        normalized, _ = from_openai({"messages": cleaned})
    except RowError as err:
        raise APIError(400, str(err), "messages") from None
    if normalized[-1]["role"] not in ("user", "tool"):
        raise APIError(400, "the last message must be from the user (or a tool result) to answer", "messages")
    return normalized, tools or None


# ---------------------------------------------------------------- responses


class Admission:
    """One admitted request: counted in flight until released (once), and the event that stops its generation."""

    def __init__(self, load: dict) -> None:
        self.load, self.cancel, self.released = load, threading.Event(), False
        load["in_flight"] += 1

    def release(self) -> None:
        self.cancel.set()
        if not self.released:
            self.released = True
            self.load["in_flight"] -= 1


@dataclass
class Served:
    engine: ChatEngine
    model_id: str
    default_max_tokens: int


def _usage(reply: Reply) -> dict:
    total = reply.prompt_tokens + reply.completion_tokens
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens, "total_tokens": total}


def _tool_calls(reply: Reply) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", **call} for call in reply.tool_calls]


def _finish_reason(reply: Reply) -> str:
    return "stop" if reply.finish_reason == "cancelled" else reply.finish_reason


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(
    engine: ChatEngine,
    model_id: str,
    api_key: str | None = None,
    max_queue: int = 16,
    default_max_tokens: int = 512,
    max_batch_size: int = 8,
    max_batch_wait: float = 0.02,
) -> FastAPI:
    app = FastAPI(title="MedicalGPT toolkit: OpenAI-compatible API")
    served = Served(engine, model_id, default_max_tokens)
    app.state.batching = batching = BatchingQueue(engine, max_batch_size, max_batch_wait)
    # Each stream in flight waits for its next piece on a thread of its own: asyncio's default pool (CPUs + 4
    # threads) would hold back the streams past it, however many rows the batch has.
    readers = ThreadPoolExecutor(max_batch_size + max_queue, thread_name_prefix="stream-reader")
    load = {"in_flight": 0}

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return APIError(err.status_code, f"{request.method} {request.url.path}: {err.detail}").response()

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                message = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
                return APIError(401, message, code="invalid_api_key").response()
        return await call_next(request)

    async def read_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON ({err})") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        if body.get("model") not in (None, served.model_id):
            raise APIError(404, f"model {body['model']!r} is not served here; use {served.model_id!r}", "model")
        return body

    def admit() -> "Admission":
        if load["in_flight"] >= max_batch_size + max_queue:
            raise APIError(429, f"the server is busy ({load['in_flight']} requests in progress); retry later")
        return Admission(load)

    async def respond(body: dict, prompt: str, tools: list | None, kind: str, passages: list | None = None):
        sampling = sampling_options(body, served.engine, served.default_max_tokens)
        try:
            served.engine.check_fits(served.engine.count_tokens(prompt), sampling["max_new_tokens"])
        except PromptTooLong as err:
            raise APIError(
                400, str(err), "messages" if kind == "chat" else "prompt", "context_length_exceeded"
            ) from None
        admission = admit()
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        if not body.get("stream"):
            try:
                reply = await asyncio.wrap_future(batching.submit(prompt, tools, **sampling))
            finally:
                admission.release()
            return JSONResponse(_whole(kind, ident, served.model_id, reply, passages))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            _stream(
                kind, ident, served, batching, readers, prompt, tools, sampling, include_usage, admission, passages
            ),
            media_type="text/event-stream",
            # Also released here: a client gone before the first chunk never starts the generator above.
            background=BackgroundTask(admission.release),
        )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served.model_id, "in_flight": load["in_flight"]}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": served.model_id, "object": "model", "created": int(time.time()), "owned_by": "medgpt"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        messages, tools = chat_messages(body)
        messages, passages = await asyncio.to_thread(served.engine.ground, messages)
        grounded = passages if served.engine.knowledge is not None else None
        return await respond(body, served.engine.render(messages, tools), tools, "chat", grounded)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be a non-empty string (or a list of one)", "prompt")
        if body.get("suffix") or body.get("echo"):
            raise APIError(400, "'suffix' and 'echo' are not supported", "suffix" if body.get("suffix") else "echo")
        return await respond(body, prompt, None, "text")

    return app


def _whole(kind: str, ident: str, model_id: str, reply: Reply, passages: list | None = None) -> dict:
    created = int(time.time())
    if kind == "text":
        choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": _finish_reason(reply)}
        return {"id": ident, "object": "text_completion", "created": created, "model": model_id,
                "choices": [choice], "usage": _usage(reply)}  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = _tool_calls(reply)
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(reply)}
    body = {"id": ident, "object": "chat.completion", "created": created, "model": model_id,
            "choices": [choice], "usage": _usage(reply)}  # fmt: skip
    if passages is not None:  # a knowledge base answered: its passages, [] when the documents had nothing
        body["sources"] = with_sources(reply, passages).sources
    return body


async def _stream(
    kind: str,
    ident: str,
    served: Served,
    batching: BatchingQueue,
    readers: ThreadPoolExecutor,
    prompt: str,
    tools: list | None,
    sampling: dict,
    include_usage: bool,
    admission: "Admission",
    passages: list | None = None,
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text piece, a last chunk with finish_reason, optionally usage, [DONE]."""
    created = int(time.time())
    head = {"id": ident, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created, "model": served.model_id}  # fmt: skip

    def chunk(delta: dict | str, finish: str | None = None, **extra) -> str:
        if kind == "chat":
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "choices": [choice], **extra})

    try:
        stream = batching.stream(prompt, tools, cancel=admission.cancel, **sampling)
        pieces = iter(stream)
        if kind == "chat":
            yield chunk({"role": "assistant", "content": ""})
        loop = asyncio.get_running_loop()
        while (piece := await loop.run_in_executor(readers, next, pieces, None)) is not None:
            yield chunk({"content": piece} if kind == "chat" else piece)
        reply = stream.reply
        if reply.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(_tool_calls(reply))]
            yield chunk({"tool_calls": calls})
        extra = {} if passages is None else {"sources": with_sources(reply, passages).sources}
        yield chunk({} if kind == "chat" else "", _finish_reason(reply), **extra)
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(reply)})
        yield _sse("[DONE]")
    finally:
        admission.release()  # a client that went away stops the generation after its current token
