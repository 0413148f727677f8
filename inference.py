"""Chat with any trained model: interactively in the terminal (streamed), or in batch from a file.

The chat format comes from the model folder (the template it was trained with) unless --template_name is given.

    python inference.py --base_model merged-sft --interactive              # 'clear' resets history, 'exit' quits
    python inference.py --base_model merged-pt --lora_model outputs-sft --interactive   # adapter, no merge needed
    python inference.py --base_model merged-sft --data_file questions.txt --output_file answers.jsonl
    # a teacher writing SFT data (offline distillation); rerun the same command to continue a stopped run:
    python inference.py --base_model teacher --data_file prompts.jsonl --output_file sft/teacher.jsonl \
        --output_format sharegpt --system_prompt "你是一名医生。" --temperature 0

Batch output: --output_format medicalgpt writes MedicalGPT's {"Input", "Output"} rows in one go; sharegpt and
messages write each conversation with its answer as a training row (ShareGPT or OpenAI; the system prompt kept),
with an "id" per prompt, appended batch by batch, so a rerun answers only what is missing. Answers cut by
--max_new_tokens are left out of those rows (counted; raise it and rerun to fill them in).
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed

from medgpt import args, atomic, data
from medgpt.datatools.convert import render
from medgpt.engine import ChatEngine, EngineArguments, PromptTooLong
from medgpt.errors import UserError, run_cli
from medgpt.prompts import with_system

logger = logging.getLogger(__name__)
OUTPUT_FORMATS = ("medicalgpt", "sharegpt", "messages")


@dataclass
class InferenceArguments:
    system_prompt: str = field(default="", metadata={"help": "System prompt for every conversation."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer in tokens."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 = greedy decoding."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling probability mass."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty > 1 discourages repeating tokens."})
    seed: int | None = field(default=None, metadata={"help": "Random seed, for reproducible sampling."})
    interactive: bool = field(default=False, metadata={"help": "Chat in the terminal."})
    single_tune: bool = field(default=False, metadata={"help": "Interactive: forget history after every answer."})
    data_file: str | None = field(default=None, metadata={"help": "Batch input: .txt (a prompt per line) or .jsonl."})
    output_file: str = field(default="./predictions_result.jsonl", metadata={"help": "Batch output (JSONL)."})
    eval_batch_size: int = field(default=4, metadata={"help": "Prompts generated together in batch mode."})
    output_format: str = field(
        default="medicalgpt", metadata={"help": "Batch rows: medicalgpt (Input/Output), sharegpt or messages."}
    )


def interactive(engine: ChatEngine, inf_args: InferenceArguments, sampling: dict) -> list[dict]:
    """Multi-turn chat on stdin/stdout, answers streamed. Returns the conversation (for tests and logs)."""
    print("Chat started. Type 'clear' to forget the conversation, 'exit' to quit.")
    history: list[dict] = []
    while True:
        try:
            query = input("User: ").strip()
        except EOFError:
            break
        if query == "exit":
            break
        if query == "clear":
            history = []
            print("(history cleared)")
            continue
        if not query:
            continue
        print("Assistant: ", end="", flush=True)
        messages = with_system([*history, {"role": "user", "content": query}], inf_args.system_prompt)
        try:
            stream = engine.stream(messages, **sampling)
        except PromptTooLong as err:
            print(f"\n({err}: type 'clear' to start over, or ask with --max_new_tokens lower)")
            continue
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        turn = [{"role": "user", "content": query}, {"role": "assistant", "content": stream.reply.text}]
        history = [] if inf_args.single_tune else history + turn
    return history


def batch(engine: ChatEngine, inf_args: InferenceArguments, sampling: dict) -> Path:
    conversations = [
        with_system(c, inf_args.system_prompt) for c in data.read_prompt_file(inf_args.data_file, "data_file")
    ]
    for number, conversation in enumerate(conversations, 1):
        try:
            engine.check_fits(engine.count_tokens(engine.render(conversation)), inf_args.max_new_tokens)
        except PromptTooLong as err:
            raise UserError(f"--data_file {inf_args.data_file}, prompt {number}: {err}.") from None
    out = Path(inf_args.output_file)
    if inf_args.output_format != "medicalgpt":
        return training_rows(engine, inf_args, sampling, conversations, out)
    with atomic.writing(out) as f:  # no half-written output file
        for start in range(0, len(conversations), inf_args.eval_batch_size):
            chunk = conversations[start : start + inf_args.eval_batch_size]
            replies = engine.batch(chunk, **sampling)
            for conversation, reply in zip(chunk, replies, strict=True):
                row = {"Input": conversation[-1]["content"], "Output": reply.text}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            logger.info("answered %d/%d", min(start + len(chunk), len(conversations)), len(conversations))
    print(f"wrote {len(conversations)} answers to {out}")
    return out


def training_rows(engine: ChatEngine, inf_args, sampling: dict, conversations: list[list[dict]], out: Path) -> Path:
    """Each conversation with its answer as a training row, appended by batch; a rerun answers the missing ids."""
    done = atomic.finished_ids(out, f"a {inf_args.output_format} row of inference.py (no id)")
    todo = [i for i in range(len(conversations)) if f"prompt-{i:06d}" not in done]
    truncated = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), inf_args.eval_batch_size):
            chunk = todo[start : start + inf_args.eval_batch_size]
            for index, reply in zip(chunk, engine.batch([conversations[i] for i in chunk], **sampling), strict=True):
                if reply.finish_reason == "length":
                    truncated += 1  # a cut answer would teach the student to stop mid-sentence
                    continue
                messages = [*conversations[index], {"role": "assistant", "content": reply.text}]
                row = render("chat", {"messages": json.dumps(messages, ensure_ascii=False)}, inf_args.output_format)
                atomic.appended_line(f, {"id": f"prompt-{index:06d}", **row})
            logger.info("answered %d/%d", min(start + len(chunk), len(todo)), len(todo))
    kept = len(todo) - truncated
    print(f"wrote {kept} rows to {out} ({len(done)} were there already)")
    if truncated:
        print(
            f"{truncated} answers reached --max_new_tokens {inf_args.max_new_tokens} and were left out; raise it "
            "and rerun to fill them in."
        )
    return out


def main(argv: list[str] | None = None):
    engine_args, inf_args = args.parse((EngineArguments, InferenceArguments), argv)
    if not inf_args.interactive and not inf_args.data_file:
        raise UserError("nothing to do: pass --interactive to chat, or --data_file FILE for batch answers.")
    if inf_args.output_format not in OUTPUT_FORMATS:
        raise UserError(f"--output_format {inf_args.output_format}: use one of {', '.join(OUTPUT_FORMATS)}.")
    if inf_args.seed is not None:
        set_seed(inf_args.seed)
    engine = ChatEngine.from_args(engine_args)
    sampling = {
        "max_new_tokens": inf_args.max_new_tokens,
        "temperature": inf_args.temperature,
        "top_p": inf_args.top_p,
        "repetition_penalty": inf_args.repetition_penalty,
    }
    if inf_args.interactive:
        return interactive(engine, inf_args, sampling)
    return batch(engine, inf_args, sampling)


if __name__ == "__main__":
    run_cli(main)
