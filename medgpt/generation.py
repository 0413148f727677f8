"""Generation settings shared by the chat engine (medgpt.engine) and the RL rollouts: which strings and tokens end an
answer, the `generate` keyword arguments, cutting a decoded answer at its stop string, rollouts sampled from exactly
the distribution whose log-probs RL computes, drawn by inverse CDF, rollouts generated with a LoRA adapter folded
into the weights, and on the CPU prompts run without their padding and batched decoding over weights packed for the
batch size."""

import contextlib
import functools
import inspect
from collections.abc import Iterator

import torch
from torch import nn
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList

from medgpt.shared_prefix import MIN_SHARED_TOKENS, shared_prefix_length, split_prompts, supports_shared_prefix


def stop_strings(template, extra: str = "") -> list[str]:
    return [s for s in (*template.stop_words, extra) if s]


def stop_tokens(tokenizer, stops: list[str]) -> tuple[list[int], list[str]]:
    """(ids of the stops that are single tokens, plus eos; the stops that take several tokens)."""
    vocab = tokenizer.get_vocab()
    stop_ids = sorted({tokenizer.convert_tokens_to_ids(s) for s in stops if s in vocab} | {tokenizer.eos_token_id})
    return stop_ids, [s for s in stops if s not in vocab]


def generation_kwargs(
    tokenizer, stops: list[str], max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
) -> dict:
    """`generate` settings: single-token stops end generation as eos ids, longer ones as stop strings;
    temperature 0 means greedy decoding."""
    stop_ids, multi_token_stops = stop_tokens(tokenizer, stops)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {
        "max_new_tokens": max_new_tokens,
        "repetition_penalty": repetition_penalty,
        "eos_token_id": stop_ids,
        "pad_token_id": tokenizer.pad_token_id,
        **(sampling if temperature > 0 else {"do_sample": False}),
        **({"stop_strings": multi_token_stops, "tokenizer": tokenizer} if multi_token_stops else {}),
    }


class InverseCdfSampler(LogitsProcessor):
    """Draws each row's next token from softmax(scores / temperature) and returns scores [B, V] that are -inf but at
    the drawn token (0), so that `generate` in greedy mode (do_sample=False) takes exactly that token.

    Same distribution as `generate`'s own sampling; cheaper: torch.multinomial draws one exponential number per
    vocabulary entry and row at every decode step (11 ms of a 110 ms step for SmolLM2's 49k vocabulary, batch 8, on
    2 CPU cores), inverse CDF one uniform number per row over a float64 cumulative sum.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cdf = torch.softmax(scores.double() / self.temperature, dim=-1).cumsum(-1)
        # u in [0, total): the first position whose cumulative sum passes u; a zero-probability entry never does.
        u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def exact_sampling(temperature: float) -> dict:
    """`generate` settings that sample from softmax(logits / temperature) and nothing else (with
    sampling_exactly_as_given): greedy mode over an InverseCdfSampler's choice."""
    return {"do_sample": False, "logits_processor": LogitsProcessorList([InverseCdfSampler(temperature)])}


def cut_at_stop(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


@contextlib.contextmanager
def sampling_exactly_as_given(model) -> Iterator[None]:
    """Within this block `model.generate` samples with the settings passed to it and nothing else.

    transformers fills every setting a `generate` call leaves unset from the checkpoint's generation_config.json: a
    shipped repetition penalty, top-k, top-p, min-p, n-gram ban or suppressed tokens (Qwen2.5-Instruct ships
    repetition_penalty 1.05 and top_k 20) would reshape the sampling distribution while PPO and GRPO compute the
    answers' log-probs from logits / temperature alone, which is off-policy without correction. The checkpoint's
    config is set aside (only its token ids kept) and restored afterwards, so saved models keep it.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id,
        eos_token_id=saved.eos_token_id,
        pad_token_id=saved.pad_token_id,
        decoder_start_token_id=saved.decoder_start_token_id,
    )
    try:
        yield
    finally:
        base.generation_config = saved


@contextlib.contextmanager
def lora_merged(model) -> Iterator[bool]:
    """Within this block a LoRA model runs with its active adapter merged into the base weights; afterwards the base
    weights are bit for bit what they were. Yields whether it merged.

    A merged layer is one matmul where an unmerged one is three plus a scale and an add: rollouts generate about
    1.2x faster on the CPU (benchmarks/rl_speed.py). The weights are restored from a copy, not by subtracting the
    update again, which would leave rounding behind in the base (the reference policy) at every rollout. Merged only
    where the merged layer computes the same function up to float32 rounding: float32 base weights held whole in
    this process. In bfloat16 or float16 a small update rounds away into the base weight (the samples would come from
    another policy), a quantized base cannot be restored, and a ZeRO-3 shard is not the whole weight: those run
    unmerged. The copy costs the memory of the adapted layers' weights while the block runs.
    """
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    weights = [
        tensor
        for layer in layers
        for tensor in (layer.get_base_layer().weight, getattr(layer.get_base_layer(), "bias", None))
        if tensor is not None
    ]
    mergeable = (
        layers
        and not any(layer.merged for layer in layers)
        and all(w.dtype == torch.float32 and not hasattr(w, "ds_id") for w in weights)
    )
    if not mergeable:
        yield False
        return
    with torch.no_grad():
        saved = [w.detach().clone() for w in weights]
        model.merge_adapter()
    try:
        yield True
    finally:
        with torch.no_grad():
            model.unmerge_adapter()  # peft's own bookkeeping (its layers unmerged again); its subtraction rounds,
            for weight, original in zip(weights, saved, strict=True):
                weight.data.copy_(original)  # so the saved weights go back over it


def _packed_linear(module: nn.Linear, packed: torch.Tensor, batch_size: int, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.numel() != batch_size * x.shape[-1]:  # the packed op has no backward
        return nn.functional.linear(x, module.weight, module.bias)
    return torch.ops.mkl._mkl_linear(x, packed, module.weight, module.bias, batch_size)


@contextlib.contextmanager
def packed_for_batch(model: nn.Module, batch_size: int) -> Iterator[bool]:
    """Within this block, on the CPU, every float32 linear layer of `model` multiplies batch_size rows (one decode
    step of a `generate` over batch_size sequences) with MKL's GEMM over a copy of its weight packed for that many
    rows; every other input, and any call that records gradients, takes the plain matmul. Yields whether it packed.

    A decode step reads every weight for a handful of rows: on 2 CPU cores MKL's plain GEMM reaches about 12 GB/s of
    weights there, the packed one close to the memory's 20 GB/s (SmolLM2-135M's matmuls of one decode step: 55 ->
    35 ms for 8 rows, 33 -> 25 ms for 4; one row gains nothing, so a single sequence is left alone). Same products
    up to float32 rounding (relative 1e-6: the summation order differs). Packing costs a copy of the weights while
    the block runs, and about 0.2 s a call for 135M parameters; the packs are the weights as the block began, so
    nothing may change the weights inside it, and nothing is kept after it (PPO's merged adapter changes every
    rollout). Left alone: a GPU or other device, half precision, an adapter's own matrices, weights that are not
    whole in this process (ZeRO-3 shards, quantized layers), modules whose forward something else replaced
    (accelerate's offload hooks), and builds without MKL.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    # An adapter's own small matrices (LoRA's A and B) are not worth a pack: only base weights stream from memory.
    adapter_parts = {
        id(part)
        for layer in model.modules()
        if isinstance(layer, BaseTunerLayer)
        for part in layer.modules()
        if part is not layer and part is not layer.get_base_layer()
    }
    linears = [
        module
        for module in model.modules()
        if isinstance(module, nn.Linear)
        and id(module) not in adapter_parts
        and "forward" not in vars(module)
        and module.weight.device.type == "cpu"
        and module.weight.dtype == torch.float32
        and module.weight.numel() > 0
        and not hasattr(module.weight, "ds_id")
    ]
    usable = batch_size >= 2 and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    if not (usable and linears):
        yield False
        return
    packs: dict[int, torch.Tensor] = {}  # one pack per weight tensor: a tied head and embedding share theirs
    with torch.no_grad():
        for module in linears:
            weight = module.weight
            if id(weight) not in packs:
                packs[id(weight)] = torch.ops.mkl._mkl_reorder_linear_weight(weight, batch_size)
    for module in linears:
        module.forward = functools.partial(_packed_linear, module, packs[id(module.weight)], batch_size)
    try:
        yield True
    finally:
        for module in linears:
            del module.forward


# Running the prompts ahead costs passes of its own (the shared beginning, the packed rows), and generate then runs
# the prompts' last column as one more: it pays where the padded pass would run at least this many padded or repeated
# positions per pass ahead. Measured on 2 CPU cores with SmolLM2-135M, generate of 48-64 tokens, in 2 passes ahead: 4
# rows saving 622-704 positions 1.26x faster, 8 rows saving 740 1.05x; 4 rows saving 143 0.97x, 103 0.98x, 3 chat
# requests saving 65 0.96-1.02x.
SAVED_POSITIONS_PER_PASS = 96
# The rows' own tokens run together in passes of at most this many tokens, kept apart by a block-diagonal mask whose
# blocks off the diagonal cost attention for nothing, more the longer the pass. Measured on 2 CPU cores with
# SmolLM2-135M after 30 shared tokens: 2048 own tokens (8-16 rows) took 5.8-6.5 s in one pass, 4.4-5.2 s in passes of
# 1024, 4.2-4.7 s in passes of 512, 4.4-6.1 s in a pass per row; 8 rows of 64 tokens 1.1 s in one pass, 1.7 s apart.
PACKED_TOKENS_PER_PASS = 512


def prefilled_without_padding(
    model: nn.Module, queries: torch.Tensor, query_mask: torch.Tensor
) -> DynamicCache | None:
    """On the CPU, the KV cache of the prompts `queries` [B, Lq] (left-padded, `query_mask` [B, Lq]) but their last
    column, computed without their padding: the beginning every row shares once (a system prompt, where it is at least
    MIN_SHARED_TOKENS long), then the rows' own tokens packed into one pass (PACKED_TOKENS_PER_PASS), each row seeing
    the shared beginning and its own tokens only. Laid out as the prompts are (a row's keys and values in its real
    columns, zeros under its padding), so `generate(input_ids=queries, attention_mask=query_mask,
    past_key_values=cache)` runs the last column and decodes as after a padded prompt pass, to float rounding.

    A padded prompt pass runs B x Lq positions where the rows hold their real tokens only: in the demo's PPO (4 chat
    prompts cut at 256 tokens), a batch with one long prompt is 60% padding, and that pass took 1.3 s of a 6 s
    rollout against 0.3 s for a batch of short ones (docs/performance.md). On a GPU one padded pass over all rows is
    cheaper, so there (and for one row, or a model whose cache is not plain keys and values, such as a sliding-window
    one, or whose attention takes no custom mask, or prompts not padded on the left), and where the padding is too
    little to pay for the passes (SAVED_POSITIONS_PER_PASS), this returns None and generate runs the padded prompt as
    usual. No gradients.
    """
    rows, width = queries.shape
    if queries.device.type != "cpu" or rows < 2 or width < 2 or not supports_shared_prefix(model):
        return None
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", "eager"):  # these take a 4D float mask
        return None
    if not query_mask[:, -1].all():  # padded on the right: generate would go on from a padding column
        return None
    lengths = query_mask.sum(1).tolist()
    shared = shared_prefix_length(queries, query_mask)
    shared = shared if shared >= MIN_SHARED_TOKENS else 0
    own_lengths = [length - 1 - shared for length in lengths]
    groups = _packed_groups(own_lengths, PACKED_TOKENS_PER_PASS)
    passes = bool(shared) + len(groups)
    saved = rows * (width - 1) - shared - sum(own_lengths)  # padded (and repeated) positions the padded pass runs
    if passes == 0 or saved < SAVED_POSITIONS_PER_PASS * passes:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's own forward
    head = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    run = functools.partial(model, use_cache=True, **head)  # one logit per pass, where the model can
    own: dict[int, tuple[DynamicCache, int]] = {}  # row -> the cache holding its own tokens, where they begin there
    with torch.no_grad():
        prefix = DynamicCache(config=model.config)
        if shared:
            run(input_ids=split_prompts(queries, query_mask, shared)[0], past_key_values=prefix)
        for group in groups:
            cache = DynamicCache(config=model.config)
            for index, layer in enumerate(prefix.layers if shared else []):
                cache.update(layer.keys, layer.values, index)  # a new tensor per update: the prefix stays as it is
            segments = [(row, own_lengths[row]) for row in group]
            tokens = torch.cat([queries[row, width - 1 - n : width - 1] for row, n in segments])[None]
            positions = torch.cat([torch.arange(shared, shared + n) for _, n in segments])[None]
            mask = packed_attention_mask([n for _, n in segments], shared, model.dtype)
            run(input_ids=tokens, position_ids=positions, attention_mask=mask, past_key_values=cache)
            start = shared
            for row, n in segments:
                own[row] = (cache, start)
                start += n
    layers = (prefix if shared else next(iter(own.values()))[0]).layers
    cache = DynamicCache(config=model.config)
    for index, layer in enumerate(layers):
        keys = layer.keys.new_zeros(rows, layer.keys.shape[1], width - 1, layer.keys.shape[3])
        values = layer.values.new_zeros(rows, layer.values.shape[1], width - 1, layer.values.shape[3])
        for row, length in enumerate(lengths):
            first = width - length  # the row's first real column
            if shared:
                keys[row, :, first : first + shared] = prefix.layers[index].keys[0]
                values[row, :, first : first + shared] = prefix.layers[index].values[0]
            if row in own:  # the row's own columns but the prompt's last
                source, start = own[row]
                n = own_lengths[row]
                keys[row, :, width - 1 - n : width - 1] = source.layers[index].keys[0, :, start : start + n]
                values[row, :, width - 1 - n : width - 1] = source.layers[index].values[0, :, start : start + n]
        cache.update(keys, values, index)
    return cache


def _packed_groups(own_lengths: list[int], budget: int) -> list[list[int]]:
    """The rows with tokens of their own, in order, grouped into passes of at most `budget` tokens (a longer row
    alone)."""
    groups: list[list[int]] = []
    total = 0
    for row, n in enumerate(own_lengths):
        if n <= 0:
            continue
        if not groups or total + n > budget:
            groups.append([])
            total = 0
        groups[-1].append(row)
        total += n
    return groups


def packed_attention_mask(own_lengths: list[int], shared: int, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, N, shared + N] additive mask (0 where attended, the dtype's lowest elsewhere) of one pass over several
    rows' tokens laid end to end (N = sum of own_lengths) after a shared beginning of `shared` cached tokens: each
    token sees the whole beginning and its own row's tokens up to itself. (transformers builds such a mask from
    restarting position ids only for a pass without a cache, so the pass after the cached beginning brings its own.)"""
    row_of = torch.repeat_interleave(torch.arange(len(own_lengths)), torch.tensor(own_lengths))
    order = torch.arange(len(row_of))
    own = (row_of[:, None] == row_of[None, :]) & (order[:, None] >= order[None, :])
    seen = torch.cat([torch.ones(len(row_of), shared, dtype=torch.bool), own], dim=1)
    return torch.zeros(seen.shape, dtype=dtype).masked_fill_(~seen, torch.finfo(dtype).min)[None, None]
