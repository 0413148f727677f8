"""Generate doctor-patient (or nurse-patient) role-play dialogues through any OpenAI-compatible endpoint, as
ShareGPT JSON lines that validate_jsonl.py and supervised_finetuning.py read.

    export OPENAI_API_KEY=sk-...
    python tools/generate_dialogues.py --base_url https://api.openai.com/v1 --model gpt-4o-mini \\
        --seed_file data/roleplay/patient_seeds.jsonl --num_dialogues 200 --output_file dialogues.jsonl
    # our own server: python openai_api.py --base_model merged-sft --port 8000, then
    python tools/generate_dialogues.py --base_url http://127.0.0.1:8000/v1 --model merged-sft \\
        --seed_file data/roleplay/patient_seeds.jsonl --num_dialogues 10 --output_file dialogues.jsonl --turns 2

Dialogue i plays seed i % (number of seeds). At most --concurrency dialogues run at once; every request is retried
on 429, 5xx, timeouts and dropped connections with exponential backoff (up to --max_retries times). Rerunning the
same command continues where a stopped run left off: finished ids are kept, none is written twice. Token counts
(and a cost estimate with --input_price / --output_price, per million tokens) are printed at the end. Exit code 1
if some dialogues failed after all retries; rerun to fill them in.
"""

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.datatools.dialogues import PROMPTS, Generator, generate, read_seeds
from medgpt.errors import UserError, run_cli


@dataclass
class DialogueArguments:
    base_url: str = field(metadata={"help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."})
    model: str = field(metadata={"help": "Model name the endpoint serves."})
    seed_file: str = field(metadata={"help": 'JSON lines of patient seeds: {"patient": ..., "staff"?: doctor|nurse}.'})
    output_file: str = field(metadata={"help": "JSON lines to append the dialogues to (resumable)."})
    num_dialogues: int = field(default=10, metadata={"help": "How many dialogues the output file should hold."})
    api_key: str | None = field(default=None, metadata={"help": "API key; default: $OPENAI_API_KEY (or none)."})
    turns: int = field(default=3, metadata={"help": "Patient-clinician exchanges per dialogue."})
    language: str = field(default="zh", metadata={"help": f"Role prompts: {'|'.join(PROMPTS)}."})
    concurrency: int = field(default=4, metadata={"help": "Dialogues generated at once."})
    max_retries: int = field(default=6, metadata={"help": "Retries per request (429, 5xx, timeouts, drops)."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds per request before it is retried."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature."})
    max_tokens: int = field(default=256, metadata={"help": "Most tokens per reply."})
    input_price: float = field(default=0.0, metadata={"help": "Price per million prompt tokens (cost estimate)."})
    output_price: float = field(default=0.0, metadata={"help": "Price per million completion tokens."})


def check(dialogue_args: DialogueArguments) -> None:
    if dialogue_args.language not in PROMPTS:
        raise UserError(f"--language {dialogue_args.language}: use one of {', '.join(PROMPTS)}.")
    for flag in ("num_dialogues", "turns", "concurrency", "max_tokens"):
        if getattr(dialogue_args, flag) < 1:
            raise UserError(f"--{flag} {getattr(dialogue_args, flag)}: must be at least 1.")
    if dialogue_args.max_retries < 0 or dialogue_args.timeout <= 0:
        raise UserError("--max_retries must be >= 0 and --timeout > 0.")


def main(argv: list[str] | None = None) -> int:
    (dialogue_args,) = args.parse((DialogueArguments,), argv)
    check(dialogue_args)
    seeds = read_seeds(dialogue_args.seed_file)
    import openai  # only this tool needs the client

    client = openai.AsyncOpenAI(
        base_url=dialogue_args.base_url,
        api_key=dialogue_args.api_key or os.environ.get("OPENAI_API_KEY") or "none",
        max_retries=dialogue_args.max_retries,
        timeout=dialogue_args.timeout,
    )
    sampling = {"temperature": dialogue_args.temperature, "max_tokens": dialogue_args.max_tokens}
    generator = Generator(client, dialogue_args.model, dialogue_args.turns, dialogue_args.language, sampling)

    def progress(done: int, total: int) -> None:
        print(f"{done}/{total} dialogues, {generator.usage.requests} requests", file=sys.stderr, flush=True)

    output = Path(dialogue_args.output_file)
    written, failures = asyncio.run(
        generate(generator, seeds, dialogue_args.num_dialogues, output, dialogue_args.concurrency, progress)
    )
    usage = generator.usage
    summary = {
        "written": written,
        "failed": len(failures),
        "requests": usage.requests,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "estimated_cost": round(usage.cost(dialogue_args.input_price, dialogue_args.output_price), 4),
        "output_file": str(output),
    }
    for failure in failures[:10]:
        print(f"failed: {failure}", file=sys.stderr)
    print(json.dumps(summary, ensure_ascii=False), file=sys.stderr)
    return int(bool(failures))


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
