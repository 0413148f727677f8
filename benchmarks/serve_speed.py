"""The OpenAI-compatible server under load: 1, 4 and 8 concurrent clients of the official `openai` client, whole
answers and streams, with the batching queue (--max_batch_size 8) and without it (1), side by side in one run.
Prints requests per second, generated tokens per second, p50/p95 latency (and time to the first streamed token),
and the requests that failed; asserts nothing.

    python benchmarks/serve_speed.py --base_model models/SmolLM2-135M-Instruct --requests 16 --max_tokens 64

Each configuration starts `openai_api.py` as users do (a child process on 127.0.0.1), waits for /health, warms it
up with one request, then sends --requests requests from each number of clients; every client sends its next
request when its last one is answered. Greedy decoding and a fixed answer budget keep the work the same across runs.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [line for line in (ROOT / "data/eval/demo_questions.txt").read_text(encoding="utf-8").splitlines() if line]


def start_server(base_model: str, port: int, batch: int, max_tokens: int, wait_ms: float) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "openai_api.py"), "--base_model", base_model, "--port", str(port)]
    command += ["--max_batch_size", str(batch), "--max_queue", "64", "--max_new_tokens", str(max_tokens)]
    command += ["--model_name", "m", "--max_batch_wait_ms", str(wait_ms)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
        if server.poll() is not None:
            break
    server.kill()
    raise SystemExit(f"the server did not start: run {' '.join(command)} to see why")


async def one_request(client: AsyncOpenAI, question: str, max_tokens: int, stream: bool) -> tuple[float, float, int]:
    """(latency, time to first token, generated tokens) of one request."""
    messages = [{"role": "user", "content": question}]
    started = time.perf_counter()
    if not stream:
        response = await client.chat.completions.create(
            model="m", messages=messages, temperature=0, max_tokens=max_tokens
        )
        latency = time.perf_counter() - started
        return latency, latency, response.usage.completion_tokens
    first, tokens = None, 0
    chunks = await client.chat.completions.create(
        model="m", messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    async for chunk in chunks:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - started
    return latency, first or latency, tokens


async def load(url: str, clients: int, requests: int, max_tokens: int, stream: bool) -> dict:
    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    todo = list(range(requests))
    results, failures = [], 0

    async def worker() -> None:
        nonlocal failures
        while todo:
            index = todo.pop()
            try:
                results.append(await one_request(client, QUESTIONS[index % len(QUESTIONS)], max_tokens, stream))
            except Exception:  # counted: a benchmark reports lost requests, it does not stop at them
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    latencies = sorted(r[0] for r in results)
    return {
        "requests/s": len(results) / wall,
        "tokens/s": sum(r[2] for r in results) / wall,
        "p50 s": statistics.median(latencies) if latencies else float("nan"),
        "p95 s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan"),
        "first token p50 s": statistics.median(r[1] for r in results) if results else float("nan"),
        "failed": failures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base_model", default="models/SmolLM2-135M-Instruct")
    parser.add_argument("--requests", type=int, default=16, help="requests per measurement")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--batch_sizes", default="1,8", help="--max_batch_size of the servers compared")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max_batch_wait_ms", type=float, default=20.0)
    parser.add_argument("--modes", default="whole,stream")
    options = parser.parse_args(argv)
    clients = [int(c) for c in options.clients.split(",")]
    print(f"{options.base_model}: {options.requests} requests of at most {options.max_tokens} tokens, greedy")
    print(f"{'server':>16} {'mode':>7} {'clients':>7} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} "
          f"{'1st tok':>7} {'failed':>6}")  # fmt: skip
    single = {}
    for batch in [int(b) for b in options.batch_sizes.split(",")]:
        server = start_server(options.base_model, options.port, batch, options.max_tokens, options.max_batch_wait_ms)
        url = f"http://127.0.0.1:{options.port}/v1"
        try:
            asyncio.run(load(url, 1, 1, options.max_tokens, False))  # warm-up
            for stream in [mode == "stream" for mode in options.modes.split(",")]:
                for count in clients:
                    figures = asyncio.run(load(url, count, options.requests, options.max_tokens, stream))
                    mode = "stream" if stream else "whole"
                    single.setdefault((batch, mode), figures["tokens/s"])
                    ratio = figures["tokens/s"] / single[(batch, mode)]
                    print(
                        f"{f'max_batch_size {batch}':>16} {mode:>7} {count:>7} {figures['requests/s']:7.2f} "
                        f"{figures['tokens/s']:7.1f} {figures['p50 s']:7.2f} {figures['p95 s']:7.2f} "
                        f"{figures['first token p50 s']:7.2f} {figures['failed']:>6}   x{ratio:.2f} of 1 client"
                    )
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
