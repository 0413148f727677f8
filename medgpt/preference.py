"""Preference pairs (reward modelling, DPO, ORPO): rendered with our chat template, cut to length in tokens, and
scored with a saved reward model.

A pair is the prompt turns plus two answers. Both answers are rendered after the same prompt by the same template
as in SFT, so the chat format is identical across stages; each answer ends with the template's stop string.
Too long: the prompt loses its oldest tokens first (a leading BOS is kept), then answers are shortened with their
stop token kept, all counted in tokens.
"""

import json
import logging
import os
from pathlib import Path

from datasets import Dataset

from medgpt import data
from medgpt.args import PreferenceArguments
from medgpt.chat import split_answer
from medgpt.tokenization import map_and_drop_empty

logger = logging.getLogger(__name__)


def align_eos_with_template(tokenizer, template) -> None:
    """TRL's DPO/ORPO append the tokenizer's eos to each answer unless it already ends with it. Our answers end
    with the template's stop string, so make that the eos when it is one token (e.g. <|im_end|>, <|eot_id|>)."""
    for stop in template.stop_words:
        if stop in tokenizer.get_vocab() and stop != tokenizer.eos_token:
            logger.info("eos token %r -> %r, the template's end of an answer", tokenizer.eos_token, stop)
            tokenizer.eos_token = stop
            return
        if stop == tokenizer.eos_token:
            return


def _tokens(tokenizer, text: str) -> tuple[list[int], list[int]]:
    if tokenizer.is_fast:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoding["input_ids"], [start for start, _ in encoding["offset_mapping"]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


def _shorten_answer(tokenizer, text: str, stop: str, limit: int) -> tuple[str, list[int]]:
    ids, starts = _tokens(tokenizer, text)
    if len(ids) <= limit:
        return text, ids
    stop_ids = _tokens(tokenizer, stop)[0] if stop and text.endswith(stop) else []
    keep = max(0, limit - len(stop_ids))
    shortened = text[: starts[keep]] + (stop if stop_ids else "") if keep < len(ids) else text
    return shortened, ids[:keep] + stop_ids


def encode_pair(tokenizer, template, row: dict, max_length: int, pref_args: PreferenceArguments) -> dict:
    """Rendered and length-limited pair: texts (for DPO/ORPO) and full token ids (for the reward model)."""
    prompt, tools = json.loads(row["prompt"]), json.loads(row["tools"]) if row["tools"] else None
    prompt_text, chosen = split_answer(template, prompt, json.loads(row["chosen"]), tools)
    prompt_other, rejected = split_answer(template, prompt, json.loads(row["rejected"]), tools)
    if prompt_other != prompt_text:
        # Auto mode counts an answer's leading whitespace as prompt: it then belongs to that answer.
        common = os.path.commonprefix([prompt_text, prompt_other])
        if prompt_text[len(common) :].strip() or prompt_other[len(common) :].strip():
            raise ValueError(f"template {template.name!r} renders the prompt differently before the two answers")
        chosen, rejected = prompt_text[len(common) :] + chosen, prompt_other[len(common) :] + rejected
        prompt_text = common
    stop = next((s for s in template.stop_words if chosen.endswith(s)), "")
    chosen, chosen_ids = _shorten_answer(tokenizer, chosen, stop, pref_args.max_target_length)
    rejected, rejected_ids = _shorten_answer(tokenizer, rejected, stop, pref_args.max_target_length)
    answer_budget = max(len(chosen_ids), len(rejected_ids))
    prompt_ids, starts = _tokens(tokenizer, prompt_text)
    keep = min(len(prompt_ids), pref_args.max_source_length, max_length - answer_budget)
    if keep < len(prompt_ids):
        # Drop the oldest prompt tokens; a leading BOS stays first (and is never doubled: texts carry no new one).
        # A "BOS" that opens every turn (SmolLM2 declares <|im_start|> so) is a turn marker and is cut like text.
        bos = int(prompt_ids[0] == tokenizer.bos_token_id and prompt_ids.count(tokenizer.bos_token_id) == 1)
        if keep <= bos:
            return {"prompt": "", "chosen": "", "rejected": "", "chosen_ids": [], "rejected_ids": []}
        cut = len(prompt_ids) - (keep - bos)
        bos_text = prompt_text[: starts[1]] if bos else ""
        prompt_text = bos_text + prompt_text[starts[cut] :]
        prompt_ids = prompt_ids[:bos] + prompt_ids[cut:]
    return {
        "prompt": prompt_text,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_ids": prompt_ids + chosen_ids,
        "rejected_ids": prompt_ids + rejected_ids,
    }


def _pair_batch(batch: dict, tokenizer, template, max_length: int, pref_args: PreferenceArguments) -> dict:
    rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    encoded = [encode_pair(tokenizer, template, row, max_length, pref_args) for row in rows]
    return {key: [e[key] for e in encoded] for key in ("prompt", "chosen", "rejected", "chosen_ids", "rejected_ids")}


def tokenize_pairs(
    dataset: Dataset,
    tokenizer,
    template,
    max_length: int,
    pref_args: PreferenceArguments,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
    what: str = "train",
) -> Dataset:
    fn_kwargs = {"tokenizer": tokenizer, "template": template, "max_length": max_length, "pref_args": pref_args}
    return map_and_drop_empty(
        dataset,
        _pair_batch,
        fn_kwargs,
        "chosen_ids",
        num_proc,
        overwrite_cache,
        f"Rendering {what} pairs",
        f"the answers leave no room for a prompt in {max_length}",
    )


def score(
    model_dir: str | Path,
    prompt: list[dict] | str,
    answers: list[str],
    template_name: str | None = None,
    tools: list | None = None,
) -> list[float]:
    """Reward scores of answers to one prompt, with a saved (merged) reward model and its chat template.

    from medgpt.preference import score
    score("merged-rm", "What helps a fever?", ["Rest and fluids.", "Nothing."])  # -> [1.3, -0.7]
    """
    from medgpt.scoring import RewardModelScorer

    scorer = RewardModelScorer(str(model_dir), template_name=template_name)
    return scorer([prompt] * len(answers), answers, [tools] * len(answers))


def trainer_datasets(splits: dict[str, Dataset], columns: list[str]) -> tuple[Dataset, Dataset | None]:
    """(train, eval) datasets with the columns a TRL trainer reads. TRL needs a training split even to evaluate;
    in an evaluation-only run the eval split stands in for it (prepared, never trained on)."""
    train = splits.get("train", splits.get("validation"))
    evaluation = splits.get("validation")
    return train.select_columns(columns), evaluation.select_columns(columns) if evaluation is not None else None


def load_pair_splits(
    data_args,
    pref_args: PreferenceArguments,
    tokenizer,
    template,
    training_args,
    cache_dir: str | None = None,
    reserved_tokens: int = 0,
) -> dict[str, Dataset]:
    """Train (and eval, when wanted) pairs, read, validated, rendered and length-limited (data.prepare_splits).
    `reserved_tokens` leaves room for tokens a trainer adds on its own (ORPO may add a BOS and an eos)."""

    raw = data.load_datasets(data_args, "preference", training_args.seed, cache_dir=cache_dir)
    return data.prepare_splits(
        raw,
        data_args,
        training_args,
        lambda rows, name: tokenize_pairs(
            rows,
            tokenizer,
            template,
            (training_args.max_length or 1024) - reserved_tokens,
            pref_args,
            data_args.preprocessing_num_workers,
            data_args.overwrite_cache,
            what=name,
        ),
        "no pair fits the length limits: the answers fill --max_length; lower --max_target_length or raise "
        "--max_length.",
    )


def pair_trainer(
    trainer_class: type, model, training_args, splits: dict[str, Dataset], columns: list[str], tokenizer, **extra
):
    """A TRL trainer on pairs (RewardTrainer, DPOTrainer, ORPOTrainer) over the prepared splits' `columns`."""
    train_set, eval_set = trainer_datasets(splits, columns)
    return trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        **extra,
    )


def tokenizer_and_pairs(
    model_args, chat_args, data_args, pref_args, training_args, *, align_eos: bool, reserved_tokens=0
):
    """(tokenizer, template, splits) of a pair stage: the chat tokenizer (its eos aligned with the template's stop
    for TRL's DPO/ORPO), and the pairs read, validated and rendered on the main process first, before anything is
    written to output_dir."""
    from medgpt import model

    tokenizer, template = model.load_chat_tokenizer(model_args, chat_args)
    if align_eos:
        align_eos_with_template(tokenizer, template)
    with training_args.main_process_first(desc="render pairs"):
        splits = load_pair_splits(
            data_args,
            pref_args,
            tokenizer,
            template,
            training_args,
            model_args.cache_dir,
            reserved_tokens=reserved_tokens,
        )
    return tokenizer, template, splits
