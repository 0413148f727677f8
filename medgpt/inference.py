"""Terminal chat and batch answers over the chat engine, shared by inference.py and chatpdf.py.

Batch answers split the prompts across processes under `torchrun --nproc_per_node N` (each answers its share of
every round; rank 0 writes), and every finished batch is kept in `OUTPUT.partial` so that a rerun of a stopped
run answers only the missing prompts. The output file is written once, whole and in input order.
"""

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from medgpt import atomic, data
from medgpt.datatools.convert import render
from medgpt.engine import ChatEngine, EngineArguments, PromptTooLong, Reply
from medgpt.errors import UserError
from medgpt.prompts import with_system
from medgpt.retrieval.knowledge import KnowledgeBase, RetrievalArguments

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
    eval_batch_size: int = field(default=4, metadata={"help": "Prompts generated together, per process."})
    output_format: str = field(
        default="medicalgpt", metadata={"help": "Batch rows: medicalgpt (Input/Output), sharegpt or messages."}
    )

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise UserError(f"--output_format {self.output_format}: use one of {', '.join(OUTPUT_FORMATS)}.")
        if self.eval_batch_size < 1 or self.max_new_tokens < 1:
            raise UserError(
                f"--eval_batch_size {self.eval_batch_size} and --max_new_tokens {self.max_new_tokens} must be >= 1."
            )

    def sampling(self) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
        }


def run(engine_args: EngineArguments, inf_args: InferenceArguments, retrieval_args: RetrievalArguments):
    """Load the engine (with the knowledge base the flags ask for), then chat (--interactive, or no --data_file)
    or answer --data_file."""
    if inf_args.seed is not None:
        set_seed(inf_args.seed)
    engine = ChatEngine.from_args(engine_args, KnowledgeBase.from_args(retrieval_args))
    if inf_args.interactive or not inf_args.data_file:
        return interactive(engine, inf_args)
    return answer_file(engine, inf_args)


def source_line(engine: ChatEngine, reply: Reply) -> str:
    """What a terminal shows under a grounded answer: its sources, or that the documents had nothing."""
    if engine.knowledge is None:
        return ""
    if not reply.sources:
        return "(no passage of the documents matches this question)"
    return "Sources: " + "; ".join(f"[{s['number']}] {s['source']}" for s in reply.sources)


def interactive(engine: ChatEngine, inf_args: InferenceArguments) -> list[dict]:
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
            stream = engine.stream(messages, **inf_args.sampling())
        except PromptTooLong as err:
            print(f"\n({err}: type 'clear' to start over, or ask with --max_new_tokens lower)")
            continue
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        if line := source_line(engine, stream.reply):
            print(line)
        turn = [{"role": "user", "content": query}, {"role": "assistant", "content": stream.reply.text}]
        history = [] if inf_args.single_tune else history + turn
    return history


def _process_group() -> tuple[int, int]:
    """(rank, world size); under torchrun the process group is started here (gloo on the CPU, else NCCL)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _gathered(mine: list, world: int) -> list:
    if world == 1:
        return mine
    import torch.distributed as dist

    everyone: list = [None] * world
    dist.all_gather_object(everyone, mine)
    return [item for part in everyone for item in part]


def _row(conversation: list[dict], reply: Reply, output_format: str) -> dict:
    if output_format == "medicalgpt":
        row = {"Input": conversation[-1]["content"], "Output": reply.text}
    else:
        messages = [*conversation, {"role": "assistant", "content": reply.text}]
        row = render("chat", {"messages": json.dumps(messages, ensure_ascii=False)}, output_format)
    if reply.sources:
        row["sources"] = [{"file": s["file"], "location": s["location"], "cited": s["cited"]} for s in reply.sources]
    return row


def answer_file(engine: ChatEngine, inf_args: InferenceArguments) -> Path:
    """Answer every prompt of --data_file into --output_file (see the module docstring). Training-row formats
    (sharegpt, messages) keep an "id" per prompt and leave out answers cut by --max_new_tokens, so a rerun with a
    larger limit fills them in; MedicalGPT's Input/Output rows keep every answer."""
    rank, world = _process_group()
    if world > 1 and torch.cuda.is_available():
        engine.model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    conversations = [
        with_system(c, inf_args.system_prompt) for c in data.read_prompt_file(inf_args.data_file, "data_file")
    ]
    for number, conversation in enumerate(conversations, 1):
        try:
            engine.check_fits(engine.count_tokens(engine.render(conversation)), inf_args.max_new_tokens)
        except PromptTooLong as err:
            raise UserError(f"--data_file {inf_args.data_file}, prompt {number}: {err}.") from None
    out = Path(inf_args.output_file)
    partial = out.with_name(out.name + ".partial")
    keeps_ids = inf_args.output_format != "medicalgpt"
    kept = {}
    if keeps_ids and out.is_file():  # an earlier run's rows stay; the prompts it left out are answered
        atomic.finished_ids(out, f"a {inf_args.output_format} row of inference.py (no id)")  # cuts a torn last line
        kept = {row["id"]: row for row in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    done = atomic.finished_ids(partial, "a row of inference.py's progress file") if rank == 0 else set()
    done = _gathered([done], world)[0] | set(kept)
    todo = [i for i in range(len(conversations)) if f"prompt-{i:06d}" not in done]
    step, truncated = inf_args.eval_batch_size * world, 0
    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
    progress = partial.open("a", encoding="utf-8") if rank == 0 else None
    try:
        for start in range(0, len(todo), step):
            mine = todo[start : start + step][rank::world]
            replies = engine.batch([conversations[i] for i in mine], **inf_args.sampling()) if mine else []
            answered = sorted(_gathered([(i, r) for i, r in zip(mine, replies, strict=True)], world))
            for index, reply in answered:
                if keeps_ids and reply.finish_reason == "length":
                    truncated += 1  # a cut answer would teach a student to stop mid-sentence
                    continue
                if progress:
                    row = _row(conversations[index], reply, inf_args.output_format)
                    atomic.appended_line(progress, {"id": f"prompt-{index:06d}", **row})
            logger.info("answered %d/%d", min(start + step, len(todo)), len(todo))
    finally:
        if progress:
            progress.close()
    if rank == 0:
        _publish(out, partial, kept, keeps_ids)
        print(f"wrote {len(todo) - truncated} answers to {out} ({len(done)} were there already)")
        if truncated:
            print(
                f"{truncated} answers reached --max_new_tokens {inf_args.max_new_tokens} and were left out; raise it "
                "and rerun to fill them in."
            )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return out


def _publish(out: Path, partial: Path, kept: dict, keeps_ids: bool) -> None:
    """The output file, whole and in prompt order, from an earlier run's rows and this run's progress file."""
    rows = dict(kept)
    for line in partial.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[row["id"]] = row
    with atomic.writing(out) as f:
        for ident in sorted(rows):
            row = rows[ident] if keeps_ids else {k: v for k, v in rows[ident].items() if k != "id"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.unlink()
