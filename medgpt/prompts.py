"""Prompt rows for the RL stages: a system prompt for rows without one, PPO's tokenized prompts, and GRPO's
conversational prompts with the columns reward functions read (reference answer, options, extra fields)."""

import json

from datasets import Dataset

from medgpt.tokenization import map_and_drop_empty


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """`system_prompt` for conversations that bring no system message of their own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def _tokenize_batch(batch: dict, tokenizer, template, max_source_length: int, system_prompt: str) -> dict:
    ids = []
    for prompt, tools in zip(batch["prompt"], batch["tools"], strict=True):
        messages = with_system(json.loads(prompt), system_prompt)
        text = template.render(messages, json.loads(tools) if tools else None, add_generation_prompt=True)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"][-max_source_length:])  # keep the newest
    return {"input_ids": ids, "prompt": batch["prompt"], "tools": batch["tools"]}


def tokenize_prompts(
    dataset: Dataset,
    tokenizer,
    template,
    max_source_length: int,
    system_prompt: str = "",
    num_proc: int | None = None,
    overwrite_cache: bool = False,
    what: str = "train",
) -> Dataset:
    """Prompts rendered with the generation header and tokenized (PPO); a prompt longer than max_source_length
    loses its oldest tokens. Keeps the prompt turns and tools, which the reward model renders in its own format."""
    return map_and_drop_empty(
        dataset,
        _tokenize_batch,
        {
            "tokenizer": tokenizer,
            "template": template,
            "max_source_length": max_source_length,
            "system_prompt": system_prompt,
        },
        "input_ids",
        num_proc,
        overwrite_cache,
        f"Tokenizing {what} prompts",
        "empty prompt",
    )


def conversational_prompts(dataset: Dataset, system_prompt: str = "") -> Dataset:
    """Rows for TRL's GRPOTrainer: `prompt` as chat turns, plus `answer`, `options` and every extra field of the
    rows as its own column (None where a row lacks it), all passed on to the reward functions."""
    extras = [json.loads(e) if e else {} for e in dataset["extra"]]
    extra_keys = sorted({key for extra in extras for key in extra} - set(dataset.column_names))
    columns = {
        "prompt": [with_system(json.loads(p), system_prompt) for p in dataset["prompt"]],
        "tools": dataset["tools"],
        "answer": dataset["answer"],
        "options": dataset["options"],
        **{key: [extra.get(key) for extra in extras] for key in extra_keys},
    }
    return Dataset.from_dict(columns)


def load_prompt_splits(data_args, training_args, cache_dir: str | None, prepare, desc: str) -> dict[str, Dataset]:
    """The prompt rows of --train_file_dir / --validation_file_dir read, split and prepared (`prepare(rows, split)`)
    on the main process first, before anything is written to output_dir: PPO and GRPO read their prompts so."""
    from medgpt import data

    with training_args.main_process_first(desc=desc):
        raw = data.load_datasets(data_args, "prompt", training_args.seed, cache_dir=cache_dir)
        return data.prepare_splits(raw, data_args, training_args, prepare, "every prompt row is empty.")
