"""One reward scorer behind reward-model scoring, PPO and GRPO: a trained reward model as a plain callable in TRL's
reward-function shape.

The scorer renders every (prompt, completion) with the reward model's own chat template and tokenizer, so a
policy with another tokenizer or template is scored exactly as the reward model was trained, through text.

    from medgpt.scoring import RewardModelScorer
    scorer = RewardModelScorer("merged-rm")
    scorer(prompts=["What helps a fever?"] * 2, completions=["Rest and fluids.", "Nothing."])  # -> [1.3, -0.7]
"""

import json
from typing import Any

import torch

from medgpt.chat import split_answer
from medgpt.errors import UserError
from medgpt.shared_prefix import forward_after_prefix, left_pad, model_inputs, supports_shared_prefix

Conversation = list[dict[str, Any]]


def as_messages(prompt: str | Conversation) -> Conversation:
    """A prompt as chat turns: a plain string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def as_answer(completion: str | Conversation | dict) -> dict:
    """A completion as one assistant message (TRL passes conversational completions as a list of one)."""
    if isinstance(completion, str):
        return {"role": "assistant", "content": completion}
    if isinstance(completion, dict):
        return {**completion, "role": "assistant"}
    return {**completion[-1], "role": "assistant"}


def without_trailing(row: list[int], token: int | None) -> list[int]:
    """`row` without the `token`s that end it; its first token stays whatever it is."""
    end = len(row)
    while end > 1 and row[end - 1] == token:
        end -= 1
    return row[:end]


class RewardModelScorer:
    """A saved reward model (merged folder, or base + `lora_model` adapter) loaded once; calling it scores
    completions: `scorer(prompts, completions, tools=None, **columns) -> list[float]` (other dataset columns are
    accepted and ignored, as TRL passes them)."""

    __name__ = "reward_model"  # TRL names a reward function's logs after it

    def __init__(
        self,
        model_dir: str,
        lora_model: str | None = None,
        template_name: str | None = None,
        batch_size: int = 8,
        device: torch.device | str | None = None,
        torch_dtype: str | None = None,
        flags: tuple[str, str] = ("--reward_model_path", "--reward_lora_path"),
    ) -> None:
        from medgpt.model import load_saved, saved_task

        if lora_model is None and saved_task(model_dir) == "causal":
            raise UserError(
                f"{flags[0]} {model_dir} is a language model, not a reward model: its score head would be random. "
                "Train one with reward_modeling.py and merge it (merge_peft_adapter.py), then pass the merged folder."
            )
        self.model, self.tokenizer, self.template = load_saved(
            model_dir,
            lora_model,
            task="reward",
            template_name=template_name,
            padding_side="right",
            torch_dtype=torch_dtype,
            flags=flags,
        )
        self.model.requires_grad_(False)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.batch_size = batch_size
        self.max_length = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.shares_prefix = supports_shared_prefix(self.model)

    def texts(self, prompts: list, completions: list, tools: list | None = None) -> list[str]:
        """Prompt and completion rendered as the reward model saw its training pairs. `tools` per sample: a list
        of tool definitions, their JSON text (the dataset column), or empty."""
        tools = [json.loads(t) if isinstance(t, str) and t else t or None for t in tools or [None] * len(prompts)]
        return [
            "".join(split_answer(self.template, as_messages(p), as_answer(c), t))
            for p, c, t in zip(prompts, completions, tools, strict=True)
        ]

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, tools: list | None = None, **columns: Any) -> list[float]:
        # Too long for the reward model: keep the end (the answer and the turn it answers).
        self.tokenizer.truncation_side = "left"
        rows = self.tokenizer(
            self.texts(prompts, completions, tools),
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,
        )["input_ids"]
        # The score head reads each row's last token that is not pad (pad may be the end-of-turn token): what follows
        # it changes nothing under causal attention, so it goes, and that token is the row's last, in the last column.
        rows = [without_trailing(row, self.model.config.pad_token_id) for row in rows]
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            ids, mask = (t.to(self.device) for t in left_pad(batch, self.tokenizer.pad_token_id))
            # A system prompt every row shares runs once for the batch (medgpt.shared_prefix).
            prefix_ids, inputs = model_inputs(ids, mask, ids[:, :0], share_prefix=self.shares_prefix)
            scores += forward_after_prefix(self.model, prefix_ids, **inputs).logits[:, 0].float().tolist()
        return scores
