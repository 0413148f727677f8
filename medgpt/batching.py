"""Concurrent completion requests answered together: the server's batching queue over the chat engine.

Requests arrive from many clients at once; one `generate` over a batch of prompts costs little more than one over a
single prompt while the model's weights, not its arithmetic, bound the speed (small batches, a CPU or one GPU). A
worker thread takes whatever requests are waiting (up to `max_batch_size`, waiting at most `max_wait` seconds for
more to arrive), groups those with the same sampling settings, and answers each group with one
`ChatEngine.complete_batch`; streamed requests share batches with whole ones, each row's text going to its own
reader as it is generated, and a reader that goes away ends its row only. A request that names a seed is answered
alone, so that its answer depends on its seed only. Requests that arrive while a batch runs wait for the next one,
so under load every batch is full. All generation runs on the queue's one thread: generations never overlap.

    batching = BatchingQueue(engine, max_batch_size=8)
    reply = await asyncio.wrap_future(batching.submit(prompt, tools, temperature=0, max_new_tokens=128))
    for piece in batching.stream(prompt, tools, cancel=event, max_new_tokens=128): ...
"""

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from medgpt.engine import ChatEngine, Reply, TextStream


@dataclass(eq=False)  # a request is itself, whatever it asks
class _Request:
    prompt: str
    tools: list[dict] | None
    sampling: dict[str, Any]
    pieces: queue.Queue | None = None  # a streamed request's text, as it is generated
    cancel: threading.Event | None = None  # set: its row ends after the current token
    future: Future = field(default_factory=Future)

    def group(self) -> tuple:
        """Requests of one group share a generate call: the same settings but the answer budget; a seeded request
        is a group of its own."""
        settings = {k: v for k, v in self.sampling.items() if k != "max_new_tokens"}
        alone = id(self) if settings.get("seed") is not None else None
        return repr(sorted(settings.items(), key=lambda item: item[0])), alone


class BatchingQueue:
    def __init__(self, engine: ChatEngine, max_batch_size: int = 8, max_wait: float = 0.02) -> None:
        self.engine, self.max_batch_size, self.max_wait = engine, max_batch_size, max_wait
        self._waiting: list[_Request] = []
        self._ready = threading.Condition()
        self.batch_sizes: list[int] = []  # what each generate call answered, for tests and benchmarks
        threading.Thread(target=self._serve, name="batching-queue", daemon=True).start()

    def submit(self, prompt: str, tools: list[dict] | None = None, **sampling) -> "Future[Reply]":
        """Queue one completion (ChatEngine.complete's arguments); the future holds its Reply or its error."""
        return self._queue(_Request(prompt, tools, sampling))

    def stream(
        self, prompt: str, tools: list[dict] | None = None, cancel: threading.Event | None = None, **sampling
    ) -> TextStream:
        """Queue one completion whose text is read as it is generated (ChatEngine.complete_stream's result)."""
        cancel = cancel or threading.Event()
        request = _Request(prompt, tools, sampling, queue.Queue(), cancel)
        future = self._queue(request)
        return self.engine.text_stream(request.pieces, future.result, cancel, tools, sampling)

    def _queue(self, request: _Request) -> Future:
        with self._ready:
            self._waiting.append(request)
            self._ready.notify()
        return request.future

    def _next_batch(self) -> list[_Request]:
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            deadline = time.monotonic() + self.max_wait
            while len(self._waiting) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)
            group = self._waiting[0].group()
            batch = [r for r in self._waiting if r.group() == group][: self.max_batch_size]
            self._waiting = [r for r in self._waiting if all(r is not taken for taken in batch)]
            return batch

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            sampling = {k: v for k, v in batch[0].sampling.items() if k != "max_new_tokens"}
            limits = [r.sampling.get("max_new_tokens", 512) for r in batch]
            streams = [r.pieces for r in batch] if any(r.pieces for r in batch) else None
            cancels = [r.cancel for r in batch] if any(r.cancel for r in batch) else None
            prompts, tools = [r.prompt for r in batch], [r.tools for r in batch]
            try:
                replies = self.engine.complete_batch(prompts, tools, limits, streams, cancels, **sampling)
            except BaseException as err:  # every request of the batch gets the error; the queue goes on
                for request in batch:
                    request.future.set_exception(err)
                continue
            self.batch_sizes.append(len(batch))
            for request, reply in zip(batch, replies, strict=True):
                request.future.set_result(reply)
