"""Serve a trained model behind an OpenAI-compatible API: the official `openai` client, LangChain, curl and any
tool that speaks the OpenAI protocol work unchanged.

Endpoints: GET /v1/models, POST /v1/chat/completions (tools, streaming as server-sent events ending with
`data: [DONE]`), POST /v1/completions, GET /health. Listens on 127.0.0.1 unless --host says otherwise.

    python openai_api.py --base_model merged-sft --port 8000
    python openai_api.py --base_model merged-pt --lora_model outputs-sft --api_key secret --host 0.0.0.0
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"model": "merged-sft", "messages": [{"role": "user", "content": "What helps a fever?"}]}'
"""

from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.engine import ChatEngine
from medgpt.errors import UserError, run_cli


@dataclass
class ServerArguments:
    base_model: str = field(metadata={"help": "Model folder or hub id (a merged model, or the base of --lora_model)."})
    lora_model: str | None = field(default=None, metadata={"help": "LoRA adapter folder, served without merging."})
    template_name: str | None = field(
        default=None, metadata={"help": "Chat template; default: the one the model was trained with."}
    )
    model_name: str | None = field(default=None, metadata={"help": "Model id clients send (default: folder name)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0 = every interface)."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    api_key: str | None = field(default=None, metadata={"help": "Require 'Authorization: Bearer KEY' on /v1."})
    max_concurrency: int = field(default=1, metadata={"help": "Generations running at once."})
    max_queue: int = field(default=16, metadata={"help": "Requests waiting for a slot; more get HTTP 429."})
    max_new_tokens: int = field(default=512, metadata={"help": "Answer length when a request sets no max_tokens."})
    stop_str: str = field(default="", metadata={"help": "Extra string that ends every answer."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the model in 8-bit (bitsandbytes)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the model in 4-bit (bitsandbytes)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.max_queue < 0 or self.max_new_tokens < 1 or not 0 < self.port < 65536:
            raise UserError(
                f"--max_concurrency {self.max_concurrency} (>= 1), --max_queue {self.max_queue} (>= 0), "
                f"--max_new_tokens {self.max_new_tokens} (>= 1) and --port {self.port} (1-65535): a value is out "
                "of range."
            )


def load_engine(server_args: ServerArguments) -> ChatEngine:
    return ChatEngine.load(
        server_args.base_model,
        server_args.lora_model,
        extra_stop=server_args.stop_str,
        template_name=server_args.template_name,
        load_in_8bit=server_args.load_in_8bit,
        load_in_4bit=server_args.load_in_4bit,
        trust_remote_code=server_args.trust_remote_code,
    )


def build_app(server_args: ServerArguments, engine: ChatEngine):
    from medgpt.serving import create_app

    model_id = server_args.model_name or Path(server_args.lora_model or server_args.base_model).name
    return create_app(
        engine,
        model_id,
        api_key=server_args.api_key,
        max_concurrency=server_args.max_concurrency,
        max_queue=server_args.max_queue,
        default_max_tokens=server_args.max_new_tokens,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    (server_args,) = args.parse((ServerArguments,), argv)
    app = build_app(server_args, load_engine(server_args))
    uvicorn.run(app, host=server_args.host, port=server_args.port, log_level="info")


if __name__ == "__main__":
    run_cli(main)
