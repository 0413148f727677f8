"""Offline, CPU-only test settings and the shared tiny model (built once per session, no downloads)."""

import os
import tempfile

# Datasets built by the tests go to a throw-away cache, not the user's ~/.cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="medgpt-test-datasets-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRL_EXPERIMENTAL_SILENCE="1",
    TOKENIZERS_PARALLELISM="false",
    WANDB_DISABLED="true",
    OMP_NUM_THREADS="1",
)
if os.environ.get("MEDGPT_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the default suite is CPU-only; MEDGPT_TEST_GPU=1 runs gpu tests

import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

torch.set_num_threads(1)
REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference" / "medicalgpt-data"


def pytest_configure(config) -> None:
    """DeepSpeed on the CPU compiles its shared-memory op on first use (about a minute on two cores).

    It goes to a folder of this checkout, not ~/.cache: torch waits forever on the lock file a killed build
    leaves behind, so one interrupted run elsewhere must not hang every DeepSpeed test after it. A build
    takes a minute, so a lock older than ten minutes is such a leftover and is removed.
    """
    import time

    extensions = Path(config.cache.mkdir("torch_extensions"))
    for lock in extensions.glob("*/lock"):
        if time.time() - lock.stat().st_mtime > 600:
            lock.unlink()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def reward_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A one-score classifier on the tiny model, saved with its template (chatml) as reward_modeling.py does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from medgpt.chat import save_template

    out = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = 0
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    save_template(out, "chatml")
    return out


@pytest.fixture(scope="session")
def eos_padded_policy(tiny_model_dir, tmp_path_factory):
    """The tiny model with pad == eos (<|im_end|>, as SmolLM2 and Llama-3 set it) and a checkpoint generation_config
    that would reshape sampling: a repetition penalty and top-k, as Qwen2.5-Instruct ships."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path_factory.mktemp("eos_pad") / "policy"
    shutil.copytree(tiny_model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=0.6, repetition_penalty=1.3, top_k=5, top_p=0.8,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model.save_pretrained(out)
    return out


def record_sampling(monkeypatch) -> list:
    """Every generate call records (sequences, processed scores): the distribution each token was drawn from."""
    from transformers.generation.utils import GenerationMixin

    calls = []
    original = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        output = original(self, *args, **kwargs, return_dict_in_generate=True, output_scores=True)
        calls.append((output.sequences, torch.stack(output.scores, dim=1)))
        return output.sequences

    monkeypatch.setattr(GenerationMixin, "generate", generate)
    return calls


def assert_phase_seconds(output_dir: Path, steps: int) -> list[dict]:
    """Every step in the run's trainer_state.json logs the seconds of its RL phases (medgpt.timing): none negative,
    together no more than the step's own. Returns those log entries."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "time/step" in entry]
    assert len(logged) == steps, history
    for entry in logged:
        phases = [entry[f"time/{phase}"] for phase in ("generate", "score", "rollout_forward", "update")]
        assert min(phases) >= 0 and entry["time/generate"] > 0 and entry["time/update"] > 0, entry
        assert sum(phases) <= entry["time/step"], entry
    return logged


@pytest.fixture(scope="session")
def reference_data() -> Path:
    if not REFERENCE_DATA.is_dir():
        pytest.skip("MedicalGPT reference data (../shared/reference) is not present")
    return REFERENCE_DATA


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """An ASGI app served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def forward_shapes(model):
    """Yields a list that gets (rows, tokens per row) of each forward pass of `model` (its input embeddings' input)
    while the block runs: (B, the prompt's width) for a padded prompt pass, (B, 1) for a decode step with the KV
    cache, (1, their tokens) for prompts run ahead packed into one row."""
    shapes: list[tuple[int, int]] = []
    embeddings = model.get_input_embeddings()
    hook = embeddings.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    try:
        yield shapes
    finally:
        hook.remove()


ROOT_DIR = Path(__file__).resolve().parents[1]
# Runs a stage script in a child process that stops at a chosen point and says so on stdout, so the test can kill
# it there: after the checkpoint of step PAUSE_AT is complete, or inside the step after PAUSE_AT.
DRIVER = """
import os, sys, time
import transformers
from medgpt.errors import run_cli
stage = __import__(sys.argv[1])
pause_at, mode = int(os.environ["PAUSE_AT"]), os.environ["PAUSE_MODE"]
if mode == "after_checkpoint":
    save = transformers.Trainer._save_checkpoint
    def save_then_wait(self, model, trial):
        save(self, model, trial)
        if self.state.global_step == pause_at:
            print("PAUSED", flush=True)
            time.sleep(600)
    transformers.Trainer._save_checkpoint = save_then_wait
else:
    step = transformers.Trainer.training_step
    def slow_step(self, *args, **kwargs):
        if self.state.global_step == pause_at:
            print("PAUSED", flush=True)
            time.sleep(3)
        return step(self, *args, **kwargs)
    transformers.Trainer.training_step = slow_step
run_cli(lambda: stage.main(sys.argv[2:]))
"""


def start_paused(module: str, argv: list[str], pause_at: int, mode: str, log: Path) -> subprocess.Popen:
    """Run the stage script `module` in a child process that pauses at `pause_at` (see DRIVER), ready to be killed."""
    env = {**os.environ, "PAUSE_AT": str(pause_at), "PAUSE_MODE": mode}  # the stage is an installed module
    env.update(MEDGPT_ALLOCATOR="system", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, module, *argv],
        cwd=ROOT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    for line in process.stdout:
        if line.strip() == "PAUSED":
            return process
    process.wait()
    pytest.fail(f"the {module} run ended (code {process.returncode}) before pausing:\n{log.read_text()[-3000:]}")


def assert_same_adapter(first: Path, second: Path) -> None:
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- a flaky OpenAI-compatible endpoint

FAILURES = ("429", "500", "drop", "slow")
SLOW = 1.5


class FlakyEndpoint(BaseHTTPRequestHandler):
    """Chat completions that fail at random one time in three, cycling through the ways an endpoint fails; a
    request that gets through is answered by `reply(request body, number of the answer)`. A slow answer takes
    SLOW seconds (give the client a shorter timeout)."""

    rng = random.Random(0)
    lock = threading.Lock()
    served: Counter = Counter()
    delay = 0.0
    reply: Callable[[dict, int], str] = staticmethod(lambda body, number: f"answer {number}")
    requests: list = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.requests.append(body)
            failing = self.rng.random() < 1 / 3
            outcome = FAILURES[sum(self.served[f] for f in FAILURES) % len(FAILURES)] if failing else "ok"
            self.served[outcome] += 1
            number = self.served["ok"]
        time.sleep(self.delay)
        if outcome == "drop":
            self.close_connection = True  # no status line at all: the client sees the connection end
            return
        if outcome == "slow":
            time.sleep(SLOW)
        status = {"ok": 200, "429": 429, "500": 500, "slow": 200}[outcome]
        reply = {
            "id": f"cmpl-{number}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": self.reply(body, number)},
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        data = json.dumps(reply if status == 200 else {"error": {"message": outcome}}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("retry-after-ms", "20")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
            pass

    def log_message(self, *args) -> None:
        pass


@contextmanager
def flaky_endpoint(reply: Callable[[dict, int], str], delay: float = 0.0):
    """A FlakyEndpoint on 127.0.0.1 in a thread; yields its base URL (…/v1)."""
    FlakyEndpoint.reply = staticmethod(reply)
    FlakyEndpoint.requests = []
    FlakyEndpoint.served = Counter()
    FlakyEndpoint.rng = random.Random(0)
    FlakyEndpoint.delay = delay
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        thread.join()
