"""Serve a trained model behind an OpenAI-compatible API: the official `openai` client, LangChain, curl and any
tool that speaks the OpenAI protocol work unchanged.

Endpoints: GET /v1/models, POST /v1/chat/completions (tools, streaming as server-sent events ending with
`data: [DONE]`), POST /v1/completions, GET /health. Listens on 127.0.0.1 unless --host says otherwise.

    python openai_api.py --base_model merged-sft --port 8000
    python openai_api.py --base_model merged-pt --lora_model outputs-sft --api_key secret --host 0.0.0.0
    python openai_api.py --base_model merged-sft --knowledge_dir guidelines/   # answers cite; "sources" in replies
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"model": "merged-sft", "messages": [{"role": "user", "content": "What helps a fever?"}]}'
"""

from dataclasses import dataclass, field

from medgpt import args
from medgpt.engine import ChatEngine, EngineArguments
from medgpt.errors import UserError, run_cli
from medgpt.retrieval.knowledge import KnowledgeBase, RetrievalArguments


@dataclass
class ServerArguments:
    model_name: str | None = field(default=None, metadata={"help": "Model id clients send (default: folder name)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0 = every interface)."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    api_key: str | None = field(default=None, metadata={"help": "Require 'Authorization: Bearer KEY' on /v1."})
    max_batch_size: int = field(
        default=8, metadata={"help": "Concurrent requests answered together in one generate (1: one by one)."}
    )
    max_batch_wait_ms: float = field(
        default=20.0, metadata={"help": "How long a new batch waits for more requests to join it (milliseconds)."}
    )
    max_queue: int = field(default=16, metadata={"help": "Requests waiting beyond a full batch; more get HTTP 429."})
    max_new_tokens: int = field(default=512, metadata={"help": "Answer length when a request sets no max_tokens."})

    def __post_init__(self) -> None:
        if (
            min(self.max_batch_size, self.max_new_tokens) < 1
            or self.max_batch_wait_ms < 0
            or self.max_queue < 0
            or not 0 < self.port < 65536
        ):
            raise UserError(
                f"--max_batch_size {self.max_batch_size} (>= 1), --max_batch_wait_ms {self.max_batch_wait_ms} (>= 0), "
                f"--max_queue {self.max_queue} (>= 0), "
                f"--max_new_tokens {self.max_new_tokens} (>= 1) and --port {self.port} (1-65535): a value is out of "
                "range."
            )


def build_app(server_args: ServerArguments, engine: ChatEngine, default_name: str):
    from medgpt.serving import create_app

    model_id = server_args.model_name or default_name
    return create_app(
        engine,
        model_id,
        api_key=server_args.api_key,
        max_queue=server_args.max_queue,
        default_max_tokens=server_args.max_new_tokens,
        max_batch_size=server_args.max_batch_size,
        max_batch_wait=server_args.max_batch_wait_ms / 1000,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    engine_args, server_args, retrieval_args = args.parse((EngineArguments, ServerArguments, RetrievalArguments), argv)
    engine = ChatEngine.from_args(engine_args, KnowledgeBase.from_args(retrieval_args))
    app = build_app(server_args, engine, engine_args.name)
    uvicorn.run(app, host=server_args.host, port=server_args.port, log_level="info")


if __name__ == "__main__":
    run_cli(main)
