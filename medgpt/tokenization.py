"""From normalized rows to training tensors: chat masks, truncation, pre-training blocks, packing, collation.

Labels are IGNORE_INDEX except where the model should learn: assistant turns and the stop string that ends each
of them (SFT), or every token (pre-training). Tokenization runs through `datasets.map`, so it uses `num_proc`,
shows progress bars and is cached.
"""

import bisect
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

from medgpt.loss import IGNORE_INDEX  # the label the loss skips: prompts, padding, cut turns

logger = logging.getLogger(__name__)


def encode_segments(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[bool], list[int]]:
    """Token ids of the rendered text, a supervised flag per token, and the token index where each supervised run
    (an assistant answer with its stop string) ends.

    The whole text is tokenized at once, exactly as it would be at inference, and the character spans of the
    supervised segments are mapped onto tokens through the offsets (fast tokenizers). Slow tokenizers have no
    offsets, so their segments are tokenized one by one.
    """
    spans, position = [], 0
    for text, supervised in segments:
        if supervised and spans and spans[-1][1] == position:
            spans[-1] = (spans[-1][0], position + len(text))  # merge adjacent supervised pieces into one run
        elif supervised:
            spans.append((position, position + len(text)))
        position += len(text)
    if tokenizer.is_fast:
        encoding = tokenizer("".join(t for t, _ in segments), add_special_tokens=False, return_offsets_mapping=True)
        ids, starts = encoding["input_ids"], [start for start, _ in encoding["offset_mapping"]]
    else:
        ids, starts, position = [], [], 0
        for text, _ in segments:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            starts += [position] * len(piece)
            position += len(text)
    span_starts = [lo for lo, _ in spans]
    supervised = [(i := bisect.bisect_right(span_starts, s) - 1) >= 0 and s < spans[i][1] for s in starts]
    ends = [bisect.bisect_left(starts, hi) for _, hi in spans]
    return ids, supervised, ends


def encode_chat(
    tokenizer, template, messages: list[dict], tools: list | None, max_length: int, train_on_inputs: bool = False
) -> tuple[list[int], list[int]]:
    """input_ids and labels of one conversation, cut to max_length without ever training a false stop token.

    Too long: keep the complete turns that fit (each still ends with its real stop token). If not even the first
    answer fits, keep its beginning with no stop token. If the prompt alone fills max_length there is nothing
    to learn: return empty lists and let the caller drop (and count) the row.
    """
    ids, supervised, turn_ends = encode_segments(tokenizer, template.segments(messages, tools))
    if len(ids) > max_length:
        complete = [end for end in turn_ends if end <= max_length]
        cut = complete[-1] if complete else max_length
        ids, supervised = ids[:cut], supervised[:cut]
    if not any(supervised):
        return [], []
    labels = list(ids) if train_on_inputs else [i if s else IGNORE_INDEX for i, s in zip(ids, supervised, strict=True)]
    return ids, labels


def _sft_batch(batch: dict, tokenizer, template, max_length: int, train_on_inputs: bool) -> dict:
    output: dict[str, list] = {"input_ids": [], "labels": []}
    for messages, tools in zip(batch["messages"], batch["tools"], strict=True):
        ids, labels = encode_chat(
            tokenizer,
            template,
            json.loads(messages),
            json.loads(tools) if tools else None,
            max_length,
            train_on_inputs,
        )
        output["input_ids"].append(ids)
        output["labels"].append(labels)
    return output


def map_batches(dataset: Dataset, function, fn_kwargs: dict, num_proc: int | None, overwrite_cache: bool, desc: str):
    """Batched, cached `datasets.map` that replaces every column with the function's output."""
    return dataset.map(
        function,
        batched=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        load_from_cache_file=not overwrite_cache,
        fn_kwargs=fn_kwargs,
        desc=desc,
    )


def map_and_drop_empty(
    dataset: Dataset,
    function,
    fn_kwargs: dict,
    column: str,
    num_proc: int | None,
    overwrite_cache: bool,
    desc: str,
    dropped_because: str,
) -> Dataset:
    """Batched, cached `datasets.map`, then drop (and count in the log) rows whose `column` came out empty."""
    mapped = map_batches(dataset, function, fn_kwargs, num_proc, overwrite_cache, desc)
    kept = mapped.filter(lambda ids: len(ids) > 0, input_columns=column, num_proc=num_proc, desc="Dropping empty rows")
    if len(kept) < len(mapped):
        logger.warning("%s: %d of %d rows dropped: %s", desc, len(mapped) - len(kept), len(mapped), dropped_because)
    return kept


def tokenize_sft(
    dataset: Dataset,
    tokenizer,
    template,
    max_length: int,
    train_on_inputs: bool = False,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
    what: str = "train",
) -> Dataset:
    fn_kwargs = {
        "tokenizer": tokenizer,
        "template": template,
        "max_length": max_length,
        "train_on_inputs": train_on_inputs,
    }
    return map_and_drop_empty(
        dataset,
        _sft_batch,
        fn_kwargs,
        "input_ids",
        num_proc,
        overwrite_cache,
        f"Tokenizing {what}",
        f"the prompt alone reaches --model_max_length {max_length}",
    )


def _text_batch(batch: dict, tokenizer) -> dict:
    ids = tokenizer(batch["text"])["input_ids"]
    eos = tokenizer.eos_token_id
    return {"input_ids": [row + [eos] if eos is not None and (not row or row[-1] != eos) else row for row in ids]}


def _blocks(batch: dict, block_size: int, packing: bool) -> dict:
    """Cut documents into block_size rows. Packing concatenates documents first; position ids restart at every
    document so attention never crosses a boundary (see Collator)."""
    output: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    if not packing:
        for ids in batch["input_ids"]:
            for start in range(0, len(ids), block_size):
                output["input_ids"].append(ids[start : start + block_size])
        output["labels"] = output["input_ids"]
        del output["position_ids"]
        return output
    ids, positions = [], []
    for doc in batch["input_ids"]:
        ids += doc
        positions += range(len(doc))
    for start in range(0, len(ids) - block_size + 1, block_size):  # the remainder that fills no block is dropped
        block, block_positions = ids[start : start + block_size], list(positions[start : start + block_size])
        if block_positions[0] != 0:  # a document continued from the previous block starts afresh here
            offset = block_positions[0]
            for i, p in enumerate(block_positions):
                if p < offset:
                    break
                block_positions[i] = p - offset
        output["input_ids"].append(block)
        output["position_ids"].append(block_positions)
        output["labels"].append([IGNORE_INDEX if p == 0 else t for t, p in zip(block, block_positions, strict=True)])
    return output


def tokenize_pretrain(
    dataset: Dataset,
    tokenizer,
    block_size: int,
    packing: bool,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
    what: str = "train",
) -> Dataset:
    tokenized = map_batches(
        dataset, _text_batch, {"tokenizer": tokenizer}, num_proc, overwrite_cache, f"Tokenizing {what}"
    )
    into = f"{'Packing' if packing else 'Chunking'} {what} into blocks of {block_size}"
    return map_batches(
        tokenized, _blocks, {"block_size": block_size, "packing": packing}, num_proc, overwrite_cache, into
    )


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: group sample indices into bins whose total length fits capacity."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (free space, bin number), kept sorted
    bins: list[list[int]] = []
    for index in order:
        slot = bisect.bisect_left(free, (lengths[index], -1))
        if slot == len(free):
            bins.append([index])
            bisect.insort(free, (capacity - lengths[index], len(bins) - 1))
        else:
            space, number = free.pop(slot)
            bins[number].append(index)
            bisect.insort(free, (space - lengths[index], number))
    return bins


def pack(dataset: Dataset, capacity: int, seed: int = 42) -> Dataset:
    """Several whole samples per row (none is split). Position ids restart at each sample and the first label of
    each sample is ignored, so a packed row trains exactly like its samples trained one by one."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    bins = pack_bins(lengths, capacity)
    rng = torch.Generator().manual_seed(seed)
    bins = [bins[i] for i in torch.randperm(len(bins), generator=rng).tolist()]  # mix long and short rows

    # Reorder once and read sequentially: far faster than random access per sample on a large Arrow table.
    ordered = iter(dataset.select([i for members in bins for i in sorted(members)]))

    def rows() -> Any:
        for members in bins:
            row: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
            for _ in members:
                sample = next(ordered)
                row["input_ids"] += sample["input_ids"]
                row["labels"] += [IGNORE_INDEX] + sample["labels"][1:]
                row["position_ids"] += range(len(sample["input_ids"]))
            yield row

    packed = Dataset.from_list(list(rows()))
    logger.info(
        "packed %d samples into %d rows of at most %d tokens (%.0f%% filled)",
        len(lengths),
        len(packed),
        capacity,
        100 * sum(lengths) / max(1, len(packed) * capacity),
    )
    return packed


@dataclass
class Collator:
    """Pads a batch. Packed rows (with position_ids) get no attention mask: transformers then derives a
    block-diagonal causal mask from the restarting position ids (sdpa/eager), or feeds them to FlashAttention-2
    as variable-length sequences. With `flatten` the whole batch becomes one row: padding-free."""

    pad_token_id: int
    flatten: bool = False
    pad_to_multiple_of: int | None = 8

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.flatten:
            return self._flatten(features)
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in features[0]
        batch: dict[str, list] = {"input_ids": [], "labels": [], "position_ids" if packed else "attention_mask": []}
        for f in features:
            pad = longest - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            if packed:  # the padding forms its own short sequence, never attended to by real tokens
                batch["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}

    def _flatten(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
        for f in features:
            positions = f.get("position_ids") or list(range(len(f["input_ids"])))
            batch["input_ids"] += f["input_ids"]
            batch["labels"] += [IGNORE_INDEX] + list(f["labels"][1:])
            batch["position_ids"] += positions
        return {key: torch.tensor([value], dtype=torch.long) for key, value in batch.items()}


def count_tokens(batch: dict[str, torch.Tensor], pad_token_id: int) -> tuple[int, int]:
    """(real tokens, supervised tokens) of a collated batch. Real = all but the padding the Collator appended:
    masked-out positions, or, in packed rows, the trailing run of unlabelled pad tokens. Supervised = the labels
    the loss uses (every label but the first of a row, as the loss shifts them)."""
    labels = batch["labels"]
    supervised = int((labels[..., 1:] != IGNORE_INDEX).sum())
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()), supervised
    padding = (batch["input_ids"] == pad_token_id) & (labels == IGNORE_INDEX)
    trailing = padding.flip(-1).int().cumprod(-1).sum()  # per row, how many positions at the end are padding
    return int(labels.numel() - trailing), supervised
