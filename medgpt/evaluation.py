"""Held-out evaluation of a saved model (a model folder, or a base model plus a LoRA adapter).

Four sections, each run only when its file is given (evaluate_model.py is the command line):
  chat        perplexity over assistant tokens (the tokens SFT trains: answers and their stop strings)
  mcq         multiple-choice accuracy: the option the model finds most likely as its answer
  preference  chosen vs rejected: a reward model's scores, the DPO implicit reward against a reference model, or the
              plain log-prob margin
  prompts     answers generated with the chat engine, scored by reward functions (medgpt.rewards)

Every text is rendered with the model's own chat template and tokenized as in training (medgpt.tokenization), and
files are read by the project's readers, so a bad row is reported as file:line.

    from medgpt.engine import EngineArguments
    from medgpt.evaluation import EvalArguments, evaluate, format_table
    results = evaluate(EngineArguments(base_model="merged-sft"), EvalArguments(chat_file="data/sft"))
    print(format_table(results))  # results["chat"]["perplexity"], ...
"""

import json
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from tqdm import tqdm

from medgpt import data
from medgpt.args import DTYPES
from medgpt.chat import split_answer
from medgpt.engine import ChatEngine, EngineArguments, PromptTooLong
from medgpt.errors import UserError
from medgpt.formats import ANSWER_KEYS, ReadReport, RowError
from medgpt.tokenization import IGNORE_INDEX, encode_chat, encode_segments

logger = logging.getLogger(__name__)

Sequence = tuple[list[int], list[bool]]  # token ids, and whether each token is scored
SECTIONS = {  # section -> (flag, row kind of the project's readers)
    "chat": ("chat_file", "chat"),
    "mcq": ("mcq_file", "prompt"),
    "preference": ("preference_file", "preference"),
    "prompts": ("prompt_file", "prompt"),
}


@dataclass
class EvalArguments:
    chat_file: str | None = field(
        default=None, metadata={"help": "Chat rows (ShareGPT/Alpaca/OpenAI), file or folder: assistant perplexity."}
    )
    mcq_file: str | None = field(
        default=None, metadata={"help": 'Multiple choice rows {"question", "options", "answer"}: accuracy.'}
    )
    preference_file: str | None = field(
        default=None, metadata={"help": "Chosen/rejected pairs: pairwise accuracy and margin."}
    )
    prompt_file: str | None = field(
        default=None, metadata={"help": "Prompt rows (question + reference answer): generate, then --reward_funcs."}
    )
    reference_model: str | None = field(
        default=None, metadata={"help": "Reference model folder for the DPO implicit reward on --preference_file."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["medical_accuracy", "choice_accuracy"],
        metadata={
            "help": "Reward functions for --prompt_file: names from medgpt.rewards, or package.module:function."
        },
    )
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward model folder for `reward_model`."})
    format_pattern: str | None = field(default=None, metadata={"help": "Regex for the `format` reward function."})
    overlong_buffer: int = field(default=64, metadata={"help": "length_penalty falls over the last N tokens."})
    system_prompt: str = field(default="", metadata={"help": "System prompt for --prompt_file rows without one."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest generated answer (--prompt_file)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature; 0 = greedy decoding."})
    batch_size: int = field(
        default=8, metadata={"help": "Sequences per forward pass, prompts per generation (MCQ: a question's options)."}
    )
    max_length: int = field(
        default=2048, metadata={"help": "Longest scored sequence in tokens; chats are cut at a turn as in SFT."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows of each file."})
    torch_dtype: Literal[DTYPES] | None = field(
        default=None,
        metadata={
            "help": "Weight dtype (auto = the checkpoint's). Default: the checkpoint's on a GPU, float32 on a CPU."
        },
    )
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip malformed rows (counted) instead of stopping."})
    output_file: str | None = field(default=None, metadata={"help": "Write every figure (and answers) to this JSON."})

    def __post_init__(self) -> None:
        for flag, value, least in (
            ("batch_size", self.batch_size, 1),
            ("max_new_tokens", self.max_new_tokens, 1),
            ("max_length", self.max_length, 8),
            ("max_samples", self.max_samples if self.max_samples is not None else 1, 1),
        ):
            if value < least:
                raise UserError(f"--{flag} {value} is too small; use at least {least}.")
        if self.temperature < 0:
            raise UserError(f"--temperature {self.temperature} must be >= 0 (0 = greedy decoding).")

    def dtype(self) -> str | None:
        """The dtype to load weights in; None = the checkpoint's. CPUs get float32: most compute bf16/fp16 slowly
        (SmolLM2-135M: about 2x) and less exactly."""
        if self.torch_dtype is None:
            return None if torch.cuda.is_available() else "float32"
        return None if self.torch_dtype == "auto" else self.torch_dtype

    def sections(self) -> dict[str, str]:
        """Section name -> the file it reads, for the sections asked for."""
        return {name: getattr(self, flag) for name, (flag, _) in SECTIONS.items() if getattr(self, flag)}


# ---------------------------------------------------------------- reading rows


def check_mcq_row(row: Any) -> Any:
    """A multiple-choice row must have options and an answer (MedQA's `answer_idx` is taken as the answer)."""
    if not isinstance(row, dict):
        return row  # the prompt reader names the problem
    if row.get("answer_idx") not in (None, ""):
        row = {**row, "answer": row["answer_idx"]}
    if row.get("options") in (None, "", [], {}):
        raise RowError("options", 'missing; multiple-choice rows need {"question", "options", "answer"}')
    chat = "messages" in row or "conversations" in row  # the final assistant turn is the answer
    if not chat and all(row.get(key) in (None, "") for key in ANSWER_KEYS):
        raise RowError("answer", 'missing; give the correct option letter, e.g. "answer": "C"')
    return row


def _checked(rows: Iterator[tuple[int, Any]], check: Callable[[Any], Any] | None) -> Iterator[tuple[int, Any]]:
    for number, row in rows:
        if check is not None and not isinstance(row, RowError):
            try:
                row = check(row)
            except RowError as err:
                row = err  # the reader reports it as file:line (or skips it with --skip_bad_rows)
        yield number, row


def read_rows(
    path: str,
    kind: data.Kind,
    flag: str,
    skip_bad_rows: bool = False,
    limit: int | None = None,
    check: Callable[[Any], Any] | None = None,
) -> list[dict]:
    """Normalized rows of a file, or of every .jsonl/.json file in a folder, read and validated by medgpt.data.
    `check` may reject a raw row with a RowError (reported as file:line) before it is normalized."""
    location = Path(path)
    if location.is_dir():
        files = data.find_files(path, kind, flag)
    elif location.is_file():
        files = [location]
    else:
        raise UserError(f"--{flag} {path}: no such file or folder; point it at a .jsonl/.json file or a folder.")
    report = ReadReport()
    sources = [(str(file), _checked(data._file_rows(file), check)) for file in files]
    rows = list(data.read_rows(sources, kind, skip_bad_rows, True, report))  # every row is checked, even past limit
    report.log(f"--{flag}")
    if not rows:
        raise UserError(f"--{flag} {path}: no usable rows (every row was skipped); see the summary above.")
    if limit is not None and limit < len(rows):
        logger.info("--%s: using the first %d of %d rows (--max_samples)", flag, limit, len(rows))
        rows = rows[:limit]
    return rows


# ---------------------------------------------------------------- log-likelihoods


def answer_sequence(tokenizer, template, prompt: list[dict], answer: dict, tools: list | None, max_length: int):
    """Token ids of prompt + answer rendered with the template, scored where the answer and its stop string are
    (the part DPO and SFT train). Longer than max_length: the oldest prompt tokens are dropped."""
    prompt_text, answer_text = split_answer(template, prompt, answer, tools)
    ids, scored, _ = encode_segments(tokenizer, [(prompt_text, False), (answer_text, True)])
    return ids[-max_length:], scored[-max_length:]


def _pad(sequences: list[Sequence], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and scored flags of a batch."""
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    scored = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (tokens, flags) in enumerate(sequences):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
        scored[row, : len(tokens)] = torch.tensor(flags, dtype=torch.bool)
    return ids, mask, scored


def _sum_logprobs(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> list[tuple[float, int]]:
    """Per row: the sum of log p(targets) where `keep`, and how many; logits[:, j] predicts targets[:, j]."""
    targets, keep = targets.to(logits.device), keep.to(logits.device)
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    token_logprobs = torch.where(keep, chosen - logits.float().logsumexp(-1), 0.0)
    return [(float(total), int(count)) for total, count in zip(token_logprobs.sum(1), keep.sum(1), strict=True)]


@torch.no_grad()
def sequence_logprobs(
    model, sequences: list[Sequence], batch_size: int, pad_id: int, desc: str = "scoring", progress: bool = True
) -> list[tuple[float, int]]:
    """(sum of log p(token | the tokens before it), number of tokens) over each sequence's scored tokens.

    Sequences go longest first in right-padded batches with an attention mask, so each result equals a forward of
    that sequence alone. Logits are computed only from the first scored position of a batch on (`logits_to_keep`).
    """
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    bar = tqdm(total=len(sequences), desc=desc, unit="seq", disable=not progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask, scored = _pad([sequences[i] for i in chunk], pad_id)
        scored[:, 0] = False  # the first token has no context to predict it from
        if scored.any():
            first = int(scored.any(0).nonzero()[0])  # earliest scored position in the batch
            device = model.device
            keep = ids.shape[1] - first + 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
            for index, result in zip(
                chunk, _sum_logprobs(logits[:, :-1], ids[:, first:], scored[:, first:]), strict=True
            ):
                results[index] = result
        bar.update(len(chunk))
    bar.close()
    return results


@torch.no_grad()
def shared_prompt_logprobs(
    model, groups: list[list[Sequence]], pad_id: int, desc: str = "scoring", progress: bool = True
) -> list[list[tuple[float, int]]]:
    """`sequence_logprobs` of groups of sequences that share a prompt (the options of one question): the shared
    tokens run once and their KV cache serves every sequence of the group, which then runs as one padded batch."""
    results = []
    bar = tqdm(total=sum(len(g) for g in groups), desc=desc, unit="seq", disable=not progress)
    for group in groups:
        shared = len(os.path.commonprefix([ids for ids, _ in group])) if len(group) > 1 else 0
        first_scored = min((flags.index(True) for _, flags in group if True in flags), default=0)
        prefix = min(shared, first_scored) - 1  # the last shared token runs with each option: it predicts the first
        if prefix < 1:
            results.append(sequence_logprobs(model, group, len(group), pad_id, progress=False))
        else:
            ids, mask, scored = _pad([(ids[prefix:], flags[prefix:]) for ids, flags in group], pad_id)
            device = model.device
            prompt = model(input_ids=torch.tensor([group[0][0][:prefix]], device=device), logits_to_keep=1)
            cache = prompt.past_key_values
            cache.batch_repeat_interleave(len(group))  # one copy of the prompt's keys and values per sequence
            mask = torch.cat([torch.ones((len(group), prefix), dtype=torch.long), mask], dim=1)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache).logits
            results.append(_sum_logprobs(logits[:, :-1], ids[:, 1:], scored[:, 1:]))
        bar.update(len(group))
    bar.close()
    return results


# ---------------------------------------------------------------- sections


def chat_perplexity(
    model, tokenizer, template, rows: list[dict], batch_size: int = 8, max_length: int = 2048, progress: bool = True
) -> dict:
    """Perplexity = exp(total NLL / total assistant tokens), the tokens SFT trains (tokenization.encode_chat)."""
    sequences, too_long = [], 0
    for row in rows:
        tools = json.loads(row["tools"]) if row["tools"] else None
        ids, labels = encode_chat(tokenizer, template, json.loads(row["messages"]), tools, max_length)
        if not ids:
            too_long += 1  # the prompt alone fills max_length
            continue
        sequences.append((ids, [label != IGNORE_INDEX for label in labels]))
    scores = sequence_logprobs(model, sequences, batch_size, tokenizer.pad_token_id, "chat perplexity", progress)
    nll, tokens = -sum(s for s, _ in scores), sum(n for _, n in scores)
    if tokens == 0:
        raise UserError(f"--chat_file: no assistant token fits --max_length {max_length}; raise it.")
    return {
        "rows": len(sequences),
        "skipped_too_long": too_long,
        "tokens": tokens,
        "nll_per_token": nll / tokens,
        "perplexity": math.exp(nll / tokens) if nll / tokens < 50 else float("inf"),
    }


def option_answer(text: str) -> dict:
    """The answer scored for one option: its text alone. With "C. text" the letter token decides, and small models
    carry a strong letter bias (SmolLM2-135M-Instruct chose "D" for 63 of data/eval/mcq's 80 questions: accuracy
    0.26; scoring the text alone: 0.41, with the four letters about equally often)."""
    return {"role": "assistant", "content": text}


def mcq_accuracy(model, tokenizer, template, rows: list[dict], max_length: int = 2048, progress: bool = True) -> dict:
    """The predicted option is the most likely answer `option_answer(text)` after the question (which lists the
    options as "A. text" lines). accuracy_sum compares summed log-probs; accuracy_norm (the headline `accuracy`)
    the mean log-prob per token, which does not favour short options. Rows with several correct letters are
    skipped and counted. The options of a question form one batch after their shared prompt (shared_prompt_logprobs).
    """
    groups, questions = [], []
    skipped: Counter = Counter()
    for row in rows:
        options = json.loads(row["options"]) if row["options"] else {}
        if len(row["answer"]) != 1 or not options:
            skipped["several correct letters" if len(row["answer"]) > 1 else "no answer or options"] += 1
            continue
        prompt, tools = json.loads(row["prompt"]), json.loads(row["tools"]) if row["tools"] else None
        groups.append(
            [
                answer_sequence(tokenizer, template, prompt, option_answer(text), tools, max_length)
                for text in options.values()
            ]
        )
        questions.append((list(options), row["answer"]))
    if not questions:
        raise UserError(f"--mcq_file: no question with exactly one correct letter to score ({dict(skipped)}).")
    scores = shared_prompt_logprobs(model, groups, tokenizer.pad_token_id, "multiple choice", progress)
    predictions = []
    for (letters, answer), option_scores in zip(questions, scores, strict=True):
        best_sum = max(range(len(letters)), key=lambda i: option_scores[i][0])  # ties: the first option
        best_norm = max(range(len(letters)), key=lambda i: option_scores[i][0] / max(1, option_scores[i][1]))
        predictions.append({"answer": answer, "sum": letters[best_sum], "norm": letters[best_norm]})
    accuracy_sum = sum(p["sum"] == p["answer"] for p in predictions) / len(predictions)
    accuracy_norm = sum(p["norm"] == p["answer"] for p in predictions) / len(predictions)
    return {
        "questions": len(predictions),
        "accuracy": accuracy_norm,
        "accuracy_norm": accuracy_norm,
        "accuracy_sum": accuracy_sum,
        "skipped": dict(skipped),
        "predictions": predictions,
    }


def pair_sequences(tokenizer, template, rows: list[dict], max_length: int) -> list[Sequence]:
    """Chosen and rejected answer of each pair after its prompt, alternating: [c0, r0, c1, r1, ...]."""
    sequences = []
    for row in rows:
        prompt, tools = json.loads(row["prompt"]), json.loads(row["tools"]) if row["tools"] else None
        for side in ("chosen", "rejected"):
            sequences.append(answer_sequence(tokenizer, template, prompt, json.loads(row[side]), tools, max_length))
    return sequences


def pair_figures(kind: str, chosen: list[float], rejected: list[float]) -> dict:
    """Pairwise accuracy (fraction with chosen > rejected) and mean margin of per-pair values."""
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "kind": kind,
        "pairs": len(margins),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "margin": sum(margins) / len(margins),
        "chosen": sum(chosen) / len(chosen),
        "rejected": sum(rejected) / len(rejected),
        "margins": margins,
    }


def lm_preference(
    model,
    tokenizer,
    template,
    rows: list[dict],
    reference=None,
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = True,
) -> dict:
    """Causal LM on pairs. With a reference model: the DPO implicit reward log p(answer) - log p_ref(answer) (beta 1),
    both computed on the same tokens; without one: log p(answer). Summed over the answer and its stop string."""
    sequences = pair_sequences(tokenizer, template, rows, max_length)
    pad = tokenizer.pad_token_id
    logps = [s for s, _ in sequence_logprobs(model, sequences, batch_size, pad, "preference pairs", progress)]
    if reference is None:
        return pair_figures("logprob", logps[0::2], logps[1::2])
    ref = [s for s, _ in sequence_logprobs(reference, sequences, batch_size, pad, "reference model", progress)]
    rewards = [p - r for p, r in zip(logps, ref, strict=True)]
    return pair_figures("dpo_implicit_reward", rewards[0::2], rewards[1::2])


def reward_model_preference(scorer, rows: list[dict], batch_size: int = 8, progress: bool = True) -> dict:
    """A reward model (medgpt.scoring.RewardModelScorer) scores both answers of every pair."""
    chosen, rejected = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc="reward model", unit="batch", disable=not progress):
        chunk = rows[start : start + batch_size]
        prompts, tools = [json.loads(r["prompt"]) for r in chunk], [r["tools"] for r in chunk]
        chosen += scorer(prompts, [json.loads(r["chosen"]) for r in chunk], tools)
        rejected += scorer(prompts, [json.loads(r["rejected"]) for r in chunk], tools)
    return pair_figures("reward_model", chosen, rejected)


def prompt_rewards(
    engine: ChatEngine,
    rows: list[dict],
    reward_funcs: dict[str, Callable],
    batch_size: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system_prompt: str = "",
    progress: bool = True,
) -> dict:
    """Answers generated by the chat engine (greedy by default), scored as GRPO scores them: every reward function
    gets the prompts, the answers and the rows' columns (answer, options, tools, extra fields). A function's mean
    is over the answers it scored (None = abstained)."""
    from datasets import Dataset

    from medgpt.prompts import conversational_prompts

    columns = conversational_prompts(Dataset.from_list(rows), system_prompt).to_dict()
    conversations = columns.pop("prompt")
    for number, conversation in enumerate(conversations, 1):
        try:
            engine.check_fits(engine.count_tokens(engine.render(conversation)), max_new_tokens)
        except PromptTooLong as err:
            raise UserError(f"--prompt_file, prompt {number}: {err}; lower --max_new_tokens.") from None
    texts: list[str] = []
    for start in tqdm(range(0, len(conversations), batch_size), desc="generating", unit="batch", disable=not progress):
        chunk = conversations[start : start + batch_size]
        texts += [r.text for r in engine.batch(chunk, max_new_tokens=max_new_tokens, temperature=temperature)]
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    ids = [engine.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    scores = {
        name: func(prompts=conversations, completions=completions, completion_ids=ids, trainer_state=None, **columns)
        for name, func in reward_funcs.items()
    }
    means = {}
    for name, values in scores.items():
        given = [float(v) for v in values if v is not None]
        means[name] = {"mean": sum(given) / len(given) if given else None, "scored": len(given)}
    answers = [
        {
            "prompt": conversation[-1]["content"],
            "answer": text,
            "reference": columns["answer"][i],
            "rewards": {name: values[i] for name, values in scores.items()},
        }
        for i, (conversation, text) in enumerate(zip(conversations, texts, strict=True))
    ]
    return {"prompts": len(texts), "rewards": means, "answers": answers}


# ---------------------------------------------------------------- the whole run


class Loaded(NamedTuple):
    """The evaluated causal LM, its tokenizer and chat template, and the optional DPO reference model."""

    model: Any
    tokenizer: Any
    template: Any
    reference: Any = None


def model_kind(base_model: str, lora_model: str | None = None, trust_remote_code: bool = False) -> str:
    """ "reward" for a sequence classifier (or a SEQ_CLS adapter), else "causal"."""
    from transformers import AutoConfig

    adapter_config = Path(lora_model or "", "adapter_config.json")
    if lora_model and adapter_config.is_file():
        return "reward" if json.loads(adapter_config.read_text()).get("task_type") == "SEQ_CLS" else "causal"
    try:
        config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return "causal"  # load_saved names the flag and what is wrong with the folder
    architectures = getattr(config, "architectures", None) or []
    return "reward" if any(a.endswith("ForSequenceClassification") for a in architectures) else "causal"


def check_sections(eval_args: EvalArguments) -> None:
    if not eval_args.sections():
        flags = ", ".join(f"--{flag}" for flag, _ in SECTIONS.values())
        raise UserError(f"nothing to evaluate: pass at least one of {flags} (a file, or a folder of them).")
    if eval_args.reference_model and not eval_args.preference_file:
        raise UserError(
            f"--reference_model {eval_args.reference_model} is only used with --preference_file; add that, or drop it."
        )


def read_sections(eval_args: EvalArguments) -> dict[str, list[dict]]:
    """Rows of every section asked for, all read and checked before any model is loaded."""
    rows = {}
    for name, path in eval_args.sections().items():
        flag, kind = SECTIONS[name]
        check = check_mcq_row if name == "mcq" else None
        rows[name] = read_rows(path, kind, flag, eval_args.skip_bad_rows, eval_args.max_samples, check)
    return rows


def _reward_funcs(eval_args: EvalArguments) -> dict[str, Callable]:
    from medgpt.rewards import RewardSettings, build_reward_funcs

    settings = RewardSettings(
        eval_args.format_pattern,
        eval_args.max_new_tokens,
        eval_args.overlong_buffer,
        eval_args.reward_model_path,
        "cuda" if torch.cuda.is_available() else "cpu",
    )
    return dict(zip(eval_args.reward_funcs, build_reward_funcs(eval_args.reward_funcs, settings), strict=True))


def _load_reference(path: str, tokenizer, torch_dtype: str | None, trust_remote_code: bool):
    from medgpt.model import load_saved

    reference = load_saved(
        path, torch_dtype=torch_dtype, trust_remote_code=trust_remote_code, flags=("--reference_model", "--lora_model")
    )[0]
    if reference.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise UserError(
            f"--reference_model {path} has fewer embedding rows than the evaluated model's tokenizer has tokens "
            f"({len(tokenizer)}); pass the model the evaluated one was trained from."
        )
    return reference


def _evaluate_reward_model(engine_args: EngineArguments, eval_args: EvalArguments, rows: dict, progress: bool):
    from medgpt.scoring import RewardModelScorer

    other = [f"--{SECTIONS[name][0]}" for name in rows if name != "preference"]
    if other or eval_args.reference_model:
        flags = " and ".join(other + (["--reference_model"] if eval_args.reference_model else []))
        raise UserError(
            f"--base_model {engine_args.base_model} is a reward model (a score head, no language model): it can only "
            f"run --preference_file. Drop {flags}, or evaluate a chat model."
        )
    scorer = RewardModelScorer(
        engine_args.base_model,
        engine_args.lora_model,
        engine_args.template_name,
        eval_args.batch_size,
        torch_dtype=eval_args.dtype(),
        flags=("--base_model", "--lora_model"),
    )
    return reward_model_preference(scorer, rows["preference"], eval_args.batch_size, progress)


def evaluate(engine_args: EngineArguments, eval_args: EvalArguments, progress: bool = True) -> dict:
    """Every section asked for in `eval_args`, on the model `engine_args` names. Returns a JSON-ready dict: "model",
    one entry per section ("chat", "mcq", "preference", "prompts") and "seconds" per section."""
    check_sections(eval_args)
    rows = read_sections(eval_args)
    kind = model_kind(engine_args.base_model, engine_args.lora_model, engine_args.trust_remote_code)
    results: dict[str, Any] = {
        "model": {"base_model": engine_args.base_model, "lora_model": engine_args.lora_model, "kind": kind},
        "seconds": {},
    }
    started = time.perf_counter()
    if kind == "reward":
        results["preference"] = _evaluate_reward_model(engine_args, eval_args, rows, progress)
        results["seconds"]["preference"] = round(time.perf_counter() - started, 2)
        return results

    from medgpt.model import load_saved

    reward_funcs = _reward_funcs(eval_args) if "prompts" in rows else {}  # a bad name fails before any model loads
    model, tokenizer, template = load_saved(
        engine_args.base_model,
        engine_args.lora_model,
        template_name=engine_args.template_name,
        tokenizer_path=engine_args.tokenizer_path,
        torch_dtype=eval_args.dtype(),
        load_in_8bit=engine_args.load_in_8bit,
        load_in_4bit=engine_args.load_in_4bit,
        resize_emb=engine_args.resize_emb,
        trust_remote_code=engine_args.trust_remote_code,
    )
    results["model"]["template"] = template.name
    reference = None
    if eval_args.reference_model:  # loaded before any section runs, so a wrong path fails at once
        reference = _load_reference(
            eval_args.reference_model, tokenizer, eval_args.dtype(), engine_args.trust_remote_code
        )
    loaded = Loaded(model, tokenizer, template, reference)
    context = getattr(model.config, "max_position_embeddings", None) or eval_args.max_length
    max_length = min(eval_args.max_length, context)
    for name in rows:
        started = time.perf_counter()
        results[name] = _causal_section(
            name, rows[name], loaded, engine_args, eval_args, max_length, reward_funcs, progress
        )
        results["seconds"][name] = round(time.perf_counter() - started, 2)
    return results


def _causal_section(
    name: str,
    rows: list[dict],
    loaded: "Loaded",
    engine_args: EngineArguments,
    eval_args: EvalArguments,
    max_length: int,
    reward_funcs: dict[str, Callable],
    progress: bool,
) -> dict:
    model, tokenizer, template, reference = loaded
    size = eval_args.batch_size
    if name == "chat":
        return chat_perplexity(model, tokenizer, template, rows, size, max_length, progress)
    if name == "mcq":
        return mcq_accuracy(model, tokenizer, template, rows, max_length, progress)
    if name == "preference":
        return lm_preference(model, tokenizer, template, rows, reference, size, max_length, progress)
    engine = ChatEngine(model, tokenizer, template, engine_args.stop_str)
    return prompt_rewards(
        engine,
        rows,
        reward_funcs,
        size,
        eval_args.max_new_tokens,
        eval_args.temperature,
        eval_args.system_prompt,
        progress,
    )


# ---------------------------------------------------------------- reporting

HEADLINES = {  # section -> the figures shown in the table, in order
    "chat": ("perplexity", "nll_per_token", "tokens", "rows"),
    "mcq": ("accuracy", "accuracy_sum", "questions"),
    "preference": ("accuracy", "margin", "pairs"),
}


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(section, figure, value) for the printed table."""
    lines = []
    for section, names in HEADLINES.items():
        for name in names if section in results else ():
            value = results[section][name]
            label = f"{name} ({results[section]['kind']})" if section == "preference" and name != "pairs" else name
            if section == "mcq" and name == "accuracy":
                label = "accuracy (length-normalised)"
            lines.append((section, label, f"{value:.4f}" if isinstance(value, float) else str(value)))
    if "prompts" in results:
        for name, figures in results["prompts"]["rewards"].items():
            mean = "n/a" if figures["mean"] is None else f"{figures['mean']:.4f}"
            lines.append(("prompts", f"mean {name}", f"{mean} ({figures['scored']} scored)"))
        lines.append(("prompts", "prompts", str(results["prompts"]["prompts"])))
    return lines


def format_table(results: dict) -> str:
    """The figures as a markdown table."""
    lines = ["| section | figure | value |", "|---|---|---|"]
    lines += [f"| {section} | {name} | {value} |" for section, name, value in table_rows(results)]
    return "\n".join(lines)


def write_json(path: str | Path, results: dict) -> Path:
    """Write atomically: a temporary file in the same folder, then renamed over `path`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, prefix=f".{out.name}.", delete=False, encoding="utf-8") as f:
        try:
            json.dump(results, f, indent=2, ensure_ascii=False)
            f.write("\n")
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, out)
    return out
