"""Attention over packed rows that skips what the block-diagonal mask would hide, for training on a CPU.

A packed row holds several samples. transformers derives a block-diagonal causal mask from the restarting position
ids and hands it to sdpa, which then scores every query against every key of the row (and, given a mask, cannot
skip the upper triangle as its causal kernel does) only to throw most of it away: with three samples in a row of 512
tokens about five sixths of that arithmetic is wasted. `segment_sdpa` runs sdpa with `is_causal` on each sample's
own span instead: the same attention, a fraction of the work. Anything else (rows without restarting positions,
decoding with a cache, attention dropout) goes to transformers' own sdpa.

It is used only where the rows come from our packing, whose batches carry position ids and no attention mask
(SFT and PT with --packing): with a padding mask, position ids alone do not say what may be attended to.
"""

import logging
import os

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

logger = logging.getLogger(__name__)

NAME = "medgpt_segment_sdpa"


def segment_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function shape: query [B, H, L, D], key and value [B, Hkv, L, D] -> output
    [B, L, H, D]. Each run of position ids that rises by one is a sample; each sample attends causally to itself."""
    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    if position_ids is None or dropout or length == 1 or key.shape[2] != length or position_ids.shape[-1] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1  # [B, L]
    if not starts.any():
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    starts[:, 0] = True
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for row, begins in enumerate(starts.tolist()):
        cuts = [i for i, begin in enumerate(begins) if begin] + [length]
        spans = [
            F.scaled_dot_product_attention(
                query[row : row + 1, :, a:b],
                key[row : row + 1, :, a:b],
                value[row : row + 1, :, a:b],
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
            for a, b in zip(cuts, cuts[1:], strict=False)
        ]
        rows.append(torch.cat(spans, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, segment_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the mask sdpa would get, for what falls back to it


def use_segment_attention(model: torch.nn.Module, packing: bool, on_cpu: bool) -> bool:
    """Switch a model loaded with sdpa to segment_sdpa when training on packed rows on a CPU; returns whether it did.
    On a GPU, FlashAttention-2 (--flash_attn) is the kernel for packed rows."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    masked = os.environ.get("MEDGPT_PACKED_ATTENTION") == "sdpa"  # the whole masked row: a benchmark configuration
    if masked or not (packing and on_cpu and base.config._attn_implementation == "sdpa"):
        return False
    base.set_attn_implementation(NAME)
    logger.info("packed rows: attention runs on each sample's own span (medgpt/attention.py)")
    return True
