"""The OpenAI-compatible server on 127.0.0.1, driven by the official `openai` client and raw HTTP; the web page in
headless Chromium."""

import concurrent.futures
import contextlib
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, running, write_jsonl

import openai_api
import supervised_finetuning
from medgpt.engine import ChatEngine

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CITIES = ["Beijing", "Shanghai", "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome"]


@pytest.fixture(scope="module")
def tool_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model taught (full SFT, qwen template) to answer weather questions with a get_weather call."""
    root = tmp_path_factory.mktemp("tools")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is the weather in {city}?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "x"}}}
                    ],
                },
            ],
            "tools": [WEATHER_TOOL],
        }
        for city in CITIES
    ]
    write_jsonl(root / "data" / "train.jsonl", rows)
    supervised_finetuning.main(
        ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(root / "data"), "--template_name"]
        + ["qwen", "--output_dir", str(root / "model"), "--use_peft", "False", "--max_steps", "150"]
        + ["--learning_rate", "1e-2", "--per_device_train_batch_size", "8", "--report_to", "none"]
        + ["--save_strategy", "no", "--validation_split_percentage", "0", "--disable_tqdm", "True"]
    )
    return root / "model"


@pytest.fixture(scope="module")
def engine(tool_model) -> ChatEngine:
    return ChatEngine.load(str(tool_model))


def server_args(tool_model: Path, **overrides) -> openai_api.ServerArguments:
    return openai_api.ServerArguments(max_new_tokens=24, **overrides)


@pytest.fixture(scope="module")
def url(engine, tool_model):
    with running(openai_api.build_app(server_args(tool_model, max_queue=16), engine, "model")) as base:
        yield base


def client(url: str, key: str = "none") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_chat_completion_models_and_usage(url):
    api = client(url)
    assert [m.id for m in api.models.list().data] == ["model"]
    response = api.chat.completions.create(
        model="model", messages=[{"role": "user", "content": "Hello, I have a cough."}], max_tokens=8, temperature=0
    )
    choice = response.choices[0]
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 5 and 0 < response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    text = api.completions.create(model="model", prompt="Fever is", max_tokens=4, temperature=0)
    assert text.object == "text_completion" and text.usage.completion_tokens <= 4


def test_stream_joins_to_the_non_streamed_answer_with_the_same_seed(url):
    api = client(url)
    request = {
        "model": "model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "I feel dizzy."}],
        "max_tokens": 20,
        "temperature": 1.0,
        "seed": 11,
    }
    whole = api.chat.completions.create(**request).choices[0].message.content
    chunks = list(api.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_tool_calls_come_back_as_openai_tool_calls(url):
    api = client(url)
    request = {
        "model": "model",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "temperature": 0,
        "max_tokens": 40,
    }
    choice = api.chat.completions.create(**request).choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "x"}
    streamed = [c for c in api.chat.completions.create(**request, stream=True) if c.choices]
    calls = [tc for c in streamed for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and streamed[-1].choices[0].finish_reason == "tool_calls"
    # The result goes back as a tool message, and the model answers after it.
    followup = api.chat.completions.create(
        model="model",
        messages=[
            *request["messages"],
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
        ],
        tools=[WEATHER_TOOL],
        max_tokens=8,
    )
    assert followup.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_api_key_is_required_when_set(engine, tool_model):
    with running(openai_api.build_app(server_args(tool_model, api_key="s3cret"), engine, "model")) as base:
        messages = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.AuthenticationError):
            client(base, "wrong").chat.completions.create(model="model", messages=messages, max_tokens=2)
        response = httpx.post(f"{base}/v1/chat/completions", json={"messages": messages})
        assert response.status_code == 401 and "Authorization: Bearer" in response.json()["error"]["message"]
        assert client(base, "s3cret").chat.completions.create(model="model", messages=messages, max_tokens=2)
        assert httpx.get(f"{base}/health").status_code == 200  # health needs no key


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("chat", b"{not json", 400, "not valid JSON"),
        ("chat", [1, 2], 400, "must be a JSON object"),
        ("chat", {}, 400, "'messages' must be a non-empty list"),
        ("chat", {"messages": []}, 400, "'messages' must be a non-empty list"),
        ("chat", {"messages": [{"role": "doctor", "content": "x"}]}, 400, "role must be one of"),
        ("chat", {"messages": [{"role": "user"}]}, 400, "messages[0].content is missing"),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
            "only text content",
        ),
        ("chat", {"messages": USER, "temperature": 5}, 400, "'temperature' must be a number from 0 to 2"),
        ("chat", {"messages": USER, "top_p": -1}, 400, "'top_p'"),
        ("chat", {"messages": USER, "max_tokens": 0}, 400, "'max_tokens' must be an integer"),
        ("chat", {"messages": USER, "max_completion_tokens": "many"}, 400, "'max_completion_tokens'"),
        ("chat", {"messages": USER, "n": 2}, 400, "'n'"),
        ("chat", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "'stop'"),
        ("chat", {"messages": USER, "seed": "x"}, 400, "'seed' must be an integer"),
        ("chat", {"messages": USER, "tools": "get_weather"}, 400, "'tools' must be a list"),
        ("chat", {"messages": [{"role": "user", "content": "fever " * 1500}]}, 400, "context holds 1024"),
        ("chat", {"messages": [*USER, {"role": "assistant", "content": "x"}]}, 400, "last message must be"),
        ("chat", {"messages": USER, "model": "gpt-4"}, 404, "'gpt-4' is not served here"),
        ("text", {"prompt": ""}, 400, "'prompt' must be a non-empty string"),
        ("text", {"prompt": "x", "echo": True}, 400, "not supported"),
        ("nowhere", {}, 404, "Not Found"),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_message(url, path, body, status, text):
    endpoint = {"chat": "/v1/chat/completions", "text": "/v1/completions"}.get(path, "/v1/nowhere")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url + endpoint, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert text in response.json()["error"]["message"]
    assert httpx.get(f"{url}/health").json()["in_flight"] == 0


def test_bounded_load_then_still_healthy(url):
    """50 requests from 8 concurrent clients: no 5xx, every one answered, the server healthy after."""

    def ask(i: int) -> int:
        body = {"messages": [{"role": "user", "content": f"Question {i}: fever?"}], "max_tokens": 6}
        if i % 5 == 0:
            body["stream"] = True
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(ask, range(50)))
    assert statuses.count(200) == 50, statuses
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "model", "in_flight": 0}


def test_requests_beyond_the_queue_get_429(engine, tool_model, monkeypatch):
    """One slot, no queue: while a request is being answered the next gets 429, and once it is done a request is
    answered again. The engine is held until the busy answer came back (a sampled answer may end at once)."""
    import threading

    release, complete_batch = threading.Event(), engine.complete_batch

    def held_complete_batch(*args, **kwargs):
        release.wait(60)
        return complete_batch(*args, **kwargs)

    monkeypatch.setattr(engine, "complete_batch", held_complete_batch)
    app = openai_api.build_app(server_args(tool_model, max_queue=0, max_batch_size=1), engine, "model")
    with running(app) as base, concurrent.futures.ThreadPoolExecutor(1) as pool:
        body = {"messages": USER, "max_tokens": 8}
        first = pool.submit(httpx.post, f"{base}/v1/chat/completions", json=body, timeout=120)
        deadline = time.time() + 20
        while httpx.get(f"{base}/health").json()["in_flight"] < 1 and time.time() < deadline:
            time.sleep(0.05)
        busy = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        release.set()
        assert busy.status_code == 429, busy.text
        assert "busy" in busy.json()["error"]["message"] and busy.json()["error"]["type"] == "rate_limit_error"
        assert first.result().status_code == 200
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120).status_code == 200


def test_a_dropped_streaming_client_frees_its_slot(engine, tool_model):
    app = openai_api.build_app(server_args(tool_model, max_queue=0, max_batch_size=1), engine, "model")
    with running(app) as base:
        body = {"messages": USER, "max_tokens": 900, "temperature": 1.0, "stop": [], "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ")
        # The client is gone: its generation stops and the only slot is free again well before 900 tokens.
        deadline = time.time() + 20
        while httpx.get(f"{base}/health").json()["in_flight"] and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health").json()["in_flight"] == 0
        quick = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, timeout=60)
        assert quick.status_code == 200


def test_server_flags_are_checked():
    from medgpt import args
    from medgpt.engine import EngineArguments
    from medgpt.errors import UserError

    engine_args, server = args.parse(
        (EngineArguments, openai_api.ServerArguments), ["--base_model", "m", "--port", "9"]
    )
    assert (
        engine_args.base_model == "m" and engine_args.name == "m" and server.port == 9 and server.host == "127.0.0.1"
    )

    with pytest.raises(UserError, match="--max_batch_size 0"):
        openai_api.ServerArguments(max_batch_size=0)


CHROMEDRIVER = shutil.which("chromedriver")


@contextlib.contextmanager
def page_in_chromium(demo):
    """The gradio page served on 127.0.0.1, opened in headless Chromium; yields (browser, wait)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        yield browser, lambda seconds, until: WebDriverWait(browser, seconds).until(until)
    finally:
        browser.quit()
        demo.close()


def ask_on_the_page(browser, wait, question: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait(60, lambda b: b.find_element(By.CSS_SELECTOR, "#message textarea"))
    box.send_keys(question, Keys.ENTER)

    def answer_shown(b) -> bool:
        text = b.find_element(By.ID, "chatbot").text
        return question in text and len(text.split(question, 1)[1].strip()) > 0

    wait(60, answer_shown)


@pytest.mark.skipif(
    CHROMEDRIVER is None, reason="no chromedriver: make test installs chromium and chromium-driver as root"
)
def test_gradio_page_streams_an_answer_in_headless_chromium(engine, tmp_path):
    from selenium.webdriver.common.by import By

    import gradio_demo

    demo = gradio_demo.build_demo(engine, "Medical chat: test", "Be brief.", max_new_tokens=24)
    with page_in_chromium(demo) as (browser, wait):
        ask_on_the_page(browser, wait, "What is the weather in Rome?")
        browser.save_screenshot(str(tmp_path / "chat.png"))
        assert (tmp_path / "chat.png").stat().st_size > 1000
        browser.find_element(By.ID, "clear").click()
        wait(30, lambda b: "weather in Rome" not in b.find_element(By.ID, "chatbot").text)


@pytest.fixture(scope="module")
def grounded(engine, tmp_path_factory) -> ChatEngine:
    """The same model with a knowledge base of two documents."""
    from medgpt.retrieval.knowledge import KnowledgeBase

    docs = tmp_path_factory.mktemp("docs")
    (docs / "warfarin.txt").write_text("For atrial fibrillation the target INR range is 2.0 to 3.0.")
    (docs / "发热.md").write_text("三个月以下的婴儿发热应当立即就医。", encoding="utf-8")
    knowledge = KnowledgeBase([docs], None)
    knowledge.update()
    return ChatEngine(engine.model, engine.tokenizer, engine.template, knowledge=knowledge)


def test_grounded_answers_return_their_sources_to_the_openai_client(grounded, tool_model):
    with running(openai_api.build_app(server_args(tool_model), grounded, "model")) as base:
        api = client(base)
        ask = {"model": "model", "max_tokens": 8, "temperature": 0}
        reply = api.chat.completions.create(messages=[{"role": "user", "content": "INR range on warfarin?"}], **ask)
        assert reply.choices[0].message.content is not None
        assert [s["source"] for s in reply.model_extra["sources"]] == ["warfarin.txt"]
        stream = api.chat.completions.create(
            messages=[{"role": "user", "content": "INR range on warfarin?"}], stream=True, **ask
        )
        last = list(stream)[-1]
        assert last.choices[0].finish_reason and last.model_extra["sources"][0]["file"] == "warfarin.txt"
        uncovered = api.chat.completions.create(messages=[{"role": "user", "content": "带状疱疹会传染吗？"}], **ask)
        assert uncovered.model_extra["sources"] == []
        plain = api.completions.create(model="model", prompt="INR", max_tokens=4)
        assert "sources" not in plain.model_extra, "raw completions are not grounded"


@pytest.mark.skipif(
    CHROMEDRIVER is None, reason="no chromedriver: make test installs chromium and chromium-driver as root"
)
def test_gradio_page_shows_the_passages_and_indexes_uploads(grounded, tmp_path):
    from selenium.webdriver.common.by import By

    import gradio_demo

    upload = tmp_path / "asthma_plan.txt"
    upload.write_text("In the yellow zone take two to four puffs of the reliever inhaler.")
    demo = gradio_demo.build_demo(grounded, "Medical chat: documents", max_new_tokens=8)
    with page_in_chromium(demo) as (browser, wait):
        ask_on_the_page(browser, wait, "INR range on warfarin?")
        wait(30, lambda b: "warfarin.txt" in b.find_element(By.ID, "sources").text)
        assert "2.0 to 3.0" in browser.find_element(By.ID, "sources").text
        browser.find_element(By.XPATH, "//button[contains(., 'Documents')]").click()  # open the accordion
        wait(30, lambda b: b.find_element(By.CSS_SELECTOR, "#upload input[type=file]")).send_keys(str(upload))
        wait(60, lambda b: "1 read now" in b.find_element(By.ID, "indexed").text)
        ask_on_the_page(browser, wait, "How many puffs of the reliever inhaler?")
        wait(30, lambda b: "asthma_plan.txt" in b.find_element(By.ID, "sources").text)
