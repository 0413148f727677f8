"""medgpt.batching and ChatEngine.complete_batch: concurrent requests answered together give the answers each would
get alone (greedy), each within its own answer budget; settings that differ, and seeded requests, are never mixed;
the server batches concurrent clients and loses none."""

import concurrent.futures
import threading

import pytest
from conftest import forward_shapes, running

import openai_api
from medgpt.batching import BatchingQueue
from medgpt.engine import ChatEngine

openai = pytest.importorskip("openai")
QUESTIONS = ["I have a fever.", "My knee hurts after running.", "发烧三天了怎么办？", "Is aspirin safe?", "Hi"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> ChatEngine:
    return ChatEngine.load(str(tiny_model_dir), template_name="qwen")


def prompts(engine: ChatEngine) -> list[str]:
    return [engine.render([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_a_batch_answers_as_each_prompt_alone_within_its_own_budget(engine):
    budgets = [3, 12, 7, 12, 1]
    alone = [
        engine.complete(p, temperature=0, max_new_tokens=n) for p, n in zip(prompts(engine), budgets, strict=True)
    ]
    together = engine.complete_batch(prompts(engine), [None] * len(QUESTIONS), budgets, temperature=0)
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    assert [r.finish_reason for r in together] == [r.finish_reason for r in alone]
    assert all(r.completion_tokens <= n for r, n in zip(together, budgets, strict=True))


def test_a_long_prompt_among_short_ones_runs_ahead_without_their_padding(engine):
    """On the CPU a batch whose padding is worth it runs its prompts ahead of generate without the padding (the
    system prompt they share once, then the requests' own tokens packed into one row): no pass over the padded
    width, and the answers each prompt gets alone."""
    batch = [engine.render([{"role": "user", "content": " ".join(QUESTIONS) * 6}]), *prompts(engine)[:3]]
    alone = [engine.complete(p, temperature=0, max_new_tokens=6).text for p in batch]
    with forward_shapes(engine.model) as shapes:
        together = engine.complete_batch(batch, [None] * len(batch), temperature=0, max_new_tokens=6)
    lengths = [engine.count_tokens(p) for p in batch]
    ahead = [(rows, width) for rows, width in shapes if width > 1]
    assert ahead and all(rows == 1 for rows, _ in ahead), f"a pass over the padded prompts ({shapes}, of {lengths})"
    assert sum(rows * width for rows, width in shapes) < sum(lengths) + 6 * len(batch), "a prompt ran more than once"
    assert [r.text for r in together] == alone


def test_the_queue_groups_requests_by_their_settings(engine):
    queue = BatchingQueue(engine, max_batch_size=8, max_wait=0.5)
    pending = [queue.submit(p, temperature=0, max_new_tokens=6) for p in prompts(engine)]
    pending.append(queue.submit(prompts(engine)[0], temperature=0.8, max_new_tokens=6))  # other settings
    pending += [queue.submit(prompts(engine)[1], temperature=0.8, max_new_tokens=6, seed=s) for s in (1, 1)]
    replies = [future.result(timeout=120) for future in pending]
    assert sorted(queue.batch_sizes) == [1, 1, 1, 5], "greedy together; sampled apart; each seeded request alone"
    alone = [engine.complete(p, temperature=0, max_new_tokens=6) for p in prompts(engine)]
    assert [r.text for r in replies[:5]] == [r.text for r in alone]
    assert replies[-1].text == replies[-2].text, "a seeded request answers as its seed says, batched or not"


def test_streams_share_batches_with_whole_answers_and_end_alone(engine):
    queue = BatchingQueue(engine, max_batch_size=8, max_wait=0.5)
    cancel = threading.Event()
    cancel.set()  # this reader went away before the first token: its row ends, the others go on
    streams = [queue.stream(p, temperature=0, max_new_tokens=10) for p in prompts(engine)[:3]]
    gone = queue.stream(prompts(engine)[3], cancel=cancel, temperature=0, max_new_tokens=10)
    whole = queue.submit(prompts(engine)[4], temperature=0, max_new_tokens=10)
    texts = ["".join(stream) for stream in streams]
    assert "".join(gone) == "" and gone.reply.finish_reason == "cancelled"
    alone = [engine.complete(p, temperature=0, max_new_tokens=10) for p in prompts(engine)]
    assert texts == [r.text for r in alone[:3]] == [s.reply.text for s in streams]
    assert whole.result(timeout=60).text == alone[4].text
    assert queue.batch_sizes == [5], "one generate for all five"


def test_an_error_reaches_every_request_of_its_batch_and_the_queue_goes_on(engine, monkeypatch):
    queue = BatchingQueue(engine, max_batch_size=4, max_wait=0.2)
    failing = threading.Event()
    failing.set()
    original = engine.complete_batch

    def complete_batch(*args, **kwargs):
        if failing.is_set():
            failing.clear()
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "complete_batch", complete_batch)
    first = [queue.submit(p, temperature=0, max_new_tokens=2) for p in prompts(engine)[:3]]
    for future in first:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(timeout=60)
    assert queue.submit(prompts(engine)[0], temperature=0, max_new_tokens=2).result(timeout=60).text is not None


def test_the_server_batches_concurrent_clients_and_loses_none(engine):
    app = openai_api.build_app(openai_api.ServerArguments(max_new_tokens=8, max_batch_size=8), engine, "m")
    with running(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)

        def ask(i: int) -> str:
            question = QUESTIONS[i % len(QUESTIONS)]
            messages = [{"role": "user", "content": question}]
            return (
                client.chat.completions.create(model="m", messages=messages, temperature=0).choices[0].message.content
            )

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(24)))
    sizes = app.state.batching.batch_sizes
    assert sum(sizes) == 24 and max(sizes) > 1, sizes
    alone = [engine.reply([{"role": "user", "content": q}], temperature=0, max_new_tokens=8).text for q in QUESTIONS]
    assert answers == [alone[i % len(QUESTIONS)] or None for i in range(24)]
