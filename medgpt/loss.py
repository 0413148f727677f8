"""The memory-saving causal-LM loss of pre-training and SFT: logits only where a label is, a chunk at a time.

A causal LM's own loss first computes fp32 logits for every position (tokens x vocabulary: 4 x 1024 x 150k tokens
is 2.4 GB before the softmax copies), although SFT learns from the answer tokens only. Here the final hidden states
of the labelled positions are gathered, and the head and cross-entropy run on `chunk_size` positions at a time under
activation checkpointing, so no chunk's logits are kept for the backward pass. Loss and gradients equal the model's
own (tests/test_loss.py); on CUDA, --use_liger_kernel selects Liger's fused kernel instead.
"""

import logging

import torch
from torch.nn import functional
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100


def _chunk_loss(states: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return functional.cross_entropy(head(states).float(), targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: torch.nn.Module,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Next-token cross-entropy of hidden states [B, T, H] against labels [B, T] (IGNORE_INDEX = no label), as
    transformers computes it: position t predicts label t+1; the sum over labelled positions divided by
    num_items_in_batch when given (gradient accumulation), else the mean. Returns a scalar."""
    shifted = functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = shifted != IGNORE_INDEX
    states, targets = hidden[keep], shifted[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        total = total + checkpoint(_chunk_loss, states[chunk], targets[chunk], head, use_reentrant=False)
    if num_items_in_batch is not None:
        return total / (
            num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        )
    return total / keep.sum()


def use_chunked_loss(model: torch.nn.Module, chunk_size: int) -> bool:
    """Make `model` (a causal LM, possibly inside a PEFT wrapper) compute its training loss with
    `chunked_cross_entropy`. Calls without labels (generation, DPO, GRPO) run the model's own forward. Returns False,
    leaving the model as it was, for models whose logits are transformed after the head (soft-capping, scaling)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = lm.config
    transformed = getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None)
    backbone = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    head = lm.get_output_embeddings()
    if chunk_size <= 0 or transformed or backbone is None or head is None:
        if chunk_size > 0:
            logger.info("%s transforms its logits: the model's own loss is used", type(lm).__name__)
        return False
    own_forward = lm.forward

    def forward(
        input_ids=None, attention_mask=None, position_ids=None, labels=None, num_items_in_batch=None, **kwargs
    ):
        if labels is None:
            return own_forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        kwargs.pop("logits_to_keep", None)
        kwargs["use_cache"] = False
        outputs = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        loss = chunked_cross_entropy(outputs.last_hidden_state, labels, head, num_items_in_batch, chunk_size)
        return CausalLMOutputWithPast(loss=loss)

    lm.forward = forward  # an instance attribute: DDP, DeepSpeed and PEFT still reach it through model(...)
    logger.info("loss on labelled positions only, %d at a time (--loss_chunk_size)", chunk_size)
    return True
