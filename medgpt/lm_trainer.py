"""The Trainer of pre-training and SFT: transformers' Trainer, the one decision of how the token loss is computed,
and token throughput in every training log entry.

The loss: Liger's fused kernel when --use_liger_kernel (the Trainer applies it), else the chunked loss of
medgpt.loss when --loss_chunk_size > 0 and the model allows it, else the model's own.

Samples per second say little once rows are packed (a packed row holds several samples) or when prompts are long
(only answer tokens are learnt from), so each log entry also gets `train_tokens_per_second` (real tokens, padding
left out) and `train_supervised_tokens_per_second` (tokens with a label), summed over all processes.
"""

import time

import torch
from transformers import Trainer

from medgpt.loss import use_chunked_loss
from medgpt.tokenization import Collator, count_tokens


class LMTrainer(Trainer):
    def __init__(self, model, args, *, loss_chunk_size: int = 0, **kwargs) -> None:
        if not args.use_liger_kernel:
            use_chunked_loss(model, loss_chunk_size)  # before the Trainer wraps the model
        super().__init__(model=model, args=args, **kwargs)
        self._tokens = torch.zeros(2, dtype=torch.long)  # real, supervised since the last log entry
        self._window_start: float | None = None

    @classmethod
    def on_splits(cls, model, args, splits: dict, tokenizer, loss_chunk_size: int, padding_free: bool) -> "LMTrainer":
        """PT's and SFT's trainer: the prepared train/validation splits, our collator (flattened rows when the
        attention kernel is padding-free)."""
        return cls(
            model=model,
            args=args,
            loss_chunk_size=loss_chunk_size,
            train_dataset=splits.get("train"),
            eval_dataset=splits.get("validation"),
            data_collator=Collator(tokenizer.pad_token_id, flatten=padding_free),
            processing_class=tokenizer,
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._window_start is None:
            self._window_start = time.perf_counter()
        real, supervised = count_tokens(inputs, self.processing_class.pad_token_id)
        self._tokens += torch.tensor([real, supervised])
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._window_start is not None:
            totals = self.accelerator.reduce(self._tokens.to(self.args.device), reduction="sum").tolist()
            seconds = max(time.perf_counter() - self._window_start, 1e-9)
            logs["train_tokens_per_second"] = round(totals[0] / seconds, 1)
            logs["train_supervised_tokens_per_second"] = round(totals[1] / seconds, 1)
            self._tokens.zero_()
            self._window_start = time.perf_counter()
        super().log(logs, start_time)
