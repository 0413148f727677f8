"""On-policy distillation (opd_training.py): a student learns a teacher's next-token distributions on answer tokens,
on the dataset's answers or on its own samples, with TRL's GKD trainer.

What TRL's GKDTrainer lacks and this module adds:
- rows tokenized with our templates and masks (every assistant turn of a dataset answer is distilled, nothing
  else), plus the prompt before the last answer, left-padded for the student's own samples (`prompt_rows`,
  `DistillCollator`);
- samples drawn from exactly the settings given (medgpt.generation.sampling_exactly_as_given) and ended by the
  template's stop tokens;
- one teacher loader (medgpt.model.load_saved) and a tokenizer check: token-level distillation compares the two
  models' distributions over one vocabulary;
- held-out figures: `eval_loss` is the divergence on the held-out answers, and `eval_teacher_answer_perplexity` is the
  student's perplexity on the teacher's own greedy answers to the held-out prompts.
"""

import json
import logging
import math

import torch
from datasets import Dataset
from trl.experimental.gkd import GKDTrainer

from medgpt.data import Kind, find_files
from medgpt.datatools.sources import detect_kind
from medgpt.errors import UserError
from medgpt.generation import sampling_exactly_as_given, stop_tokens
from medgpt.tokenization import IGNORE_INDEX, Collator, encode_chat, map_and_drop_empty

logger = logging.getLogger(__name__)


def last_answer_start(labels: list[int]) -> int:
    """Index of the first token of the last supervised run (the final answer); 0 when nothing is supervised."""
    start = 0
    for index in range(1, len(labels)):
        if labels[index] != IGNORE_INDEX and labels[index - 1] == IGNORE_INDEX:
            start = index
    return start


def _prompt_batch(input_ids: list[list[int]], labels: list[list[int]]) -> dict:
    # A row without an answer (a prompt row with no reference) is all prompt: only the student's samples use it.
    return {
        "prompt_ids": [
            ids[: last_answer_start(row)] if any(label != IGNORE_INDEX for label in row) else ids
            for ids, row in zip(input_ids, labels, strict=True)
        ]
    }


def row_kind(data_args) -> Kind:
    """ "prompt" when the training files hold prompt rows (question/answer, multiple choice, {"prompt"}), else
    "chat"; a folder mixing both is an error."""
    if not data_args.train_file_dir:
        return "chat"
    kinds = {detect_kind(path) for path in find_files(data_args.train_file_dir, "chat", "train_file_dir")}
    if "prompt" in kinds and len(kinds) > 1:
        raise UserError(
            f"--train_file_dir {data_args.train_file_dir} mixes chat rows and prompt rows; put them in separate "
            "folders and distil one kind per run."
        )
    return "prompt" if kinds == {"prompt"} else "chat"


def _prompt_row_batch(batch: dict, tokenizer, template, max_length: int) -> dict:
    output: dict[str, list] = {"input_ids": [], "labels": []}
    for prompt, tools, answer in zip(batch["prompt"], batch["tools"], batch["answer"], strict=True):
        messages, tools = json.loads(prompt), json.loads(tools) if tools else None
        if answer:  # the reference answer is distilled like an SFT answer
            ids, labels = encode_chat(
                tokenizer, template, [*messages, {"role": "assistant", "content": answer}], tools, max_length
            )
        else:
            text = template.render(messages, tools, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids, labels = (ids, [IGNORE_INDEX] * len(ids)) if len(ids) < max_length else ([], [])
        output["input_ids"].append(ids)
        output["labels"].append(labels)
    return output


def tokenize_prompt_rows(
    dataset: Dataset, tokenizer, template, max_length: int, num_proc: int | None, overwrite_cache: bool, what: str
) -> Dataset:
    """Prompt rows as distillation rows: with a reference answer, the chat it makes; without one, the prompt alone."""
    return map_and_drop_empty(
        dataset,
        _prompt_row_batch,
        {"tokenizer": tokenizer, "template": template, "max_length": max_length},
        "input_ids",
        num_proc,
        overwrite_cache,
        f"Tokenizing {what} prompts",
        f"the prompt alone reaches --max_length {max_length}",
    )


def check_answers_for_lambda(splits: dict[str, Dataset], lmbda: float) -> None:
    """Rows without a reference answer give the dataset steps nothing to distil: they need fully on-policy runs."""
    missing = sum(all(label == IGNORE_INDEX for label in row) for row in splits["train"]["labels"])
    if missing and lmbda < 1:
        raise UserError(
            f"{missing} training rows have no reference answer, so only the student's own samples can be distilled "
            f"on them: pass --opd_lambda 1 (fully on-policy), or give the rows answers (--lmbda is {lmbda})."
        )


def prompt_rows(tokenized: Dataset, max_prompt_length: int) -> Dataset:
    """SFT-tokenized rows with `prompt_ids`: the tokens before the last answer (what the student answers on its own),
    dropping rows whose prompt is longer than `max_prompt_length`."""
    with_prompts = tokenized.map(_prompt_batch, batched=True, input_columns=["input_ids", "labels"])
    kept = with_prompts.filter(lambda ids: 0 < len(ids) <= max_prompt_length, input_columns="prompt_ids")
    if len(kept) < len(with_prompts):
        logger.warning(
            "%d of %d rows dropped: their prompt is longer than --max_prompt_length %d",
            len(with_prompts) - len(kept),
            len(with_prompts),
            max_prompt_length,
        )
    return kept


class DistillCollator:
    """Our SFT collator (right padding, answer labels) plus the prompts left-padded for generation."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.answers = Collator(pad_token_id, pad_to_multiple_of=None)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.answers([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        longest = max(len(f["prompt_ids"]) for f in features)
        prompts = [[self.pad_token_id] * (longest - len(f["prompt_ids"])) + list(f["prompt_ids"]) for f in features]
        masks = [[0] * (longest - len(f["prompt_ids"])) + [1] * len(f["prompt_ids"]) for f in features]
        return {**batch, "prompts": torch.tensor(prompts), "prompt_attention_mask": torch.tensor(masks)}


def check_same_vocabulary(student_tokenizer, teacher_tokenizer, teacher_path: str) -> None:
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise UserError(
            f"--teacher_model_name_or_path {teacher_path}: its tokenizer differs from the student's, so their "
            "next-token distributions cannot be compared token by token. Distil offline instead: the teacher "
            "writes SFT data (python inference.py --base_model TEACHER --data_file PROMPTS --output_format sharegpt "
            "--output_file data/distill/teacher.jsonl) and the student trains on it with supervised_finetuning.py."
        )


class OnPolicyDistillTrainer(GKDTrainer):
    """TRL's GKDTrainer with our rows, exact sampling, the template's stops, and held-out teacher-answer perplexity."""

    def __init__(self, *, teacher_model, tokenizer, template, **kwargs) -> None:
        super().__init__(teacher_model=teacher_model, processing_class=tokenizer, **kwargs)
        stop_ids, _ = stop_tokens(tokenizer, list(template.stop_words))
        self.generation_config.eos_token_id = stop_ids
        self.generation_kwargs["eos_token_id"] = stop_ids
        self._teacher_answers: list[dict] | None = None
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean; the Trainer divides by the steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The mean over this batch's answer tokens. TRL would divide by num_items_in_batch, which counts the
        # dataset's answer tokens: on-policy steps replace those answers, and prompt rows may have none (0 / 0).
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch=None)

    def generate_on_policy_outputs(self, model, inputs, generation_config):
        with sampling_exactly_as_given(model):
            return GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)

    @torch.no_grad()
    def teacher_answers(self) -> list[dict]:
        """The teacher's greedy answers to the held-out prompts, as rows with labels on the answer (made once)."""
        if self._teacher_answers is None:
            greedy = {**self.generation_kwargs, "do_sample": False, "temperature": None}
            greedy.pop("top_k", None), greedy.pop("top_p", None)
            size, rows = self.args.per_device_eval_batch_size, []
            for start in range(0, len(self.eval_dataset), size):
                chunk = self.eval_dataset.select(range(start, min(start + size, len(self.eval_dataset))))
                batch = {k: v.to(self.teacher_model.device) for k, v in self.data_collator(list(chunk)).items()}
                with sampling_exactly_as_given(self.teacher_model):
                    ids, mask, labels = GKDTrainer.generate_on_policy_outputs(
                        self.teacher_model, batch, type(self.generation_config)(**greedy)
                    )
                for row_ids, row_mask, row_labels in zip(ids, mask.bool(), labels, strict=True):
                    rows.append({"input_ids": row_ids[row_mask].tolist(), "labels": row_labels[row_mask].tolist()})
            self._teacher_answers = rows
        return self._teacher_answers

    @torch.no_grad()
    def teacher_answer_perplexity(self) -> float:
        model = self.accelerator.unwrap_model(self.model)
        collate = Collator(self.processing_class.pad_token_id, pad_to_multiple_of=None)
        nll, tokens = 0.0, 0
        rows = self.teacher_answers()
        size = self.args.per_device_eval_batch_size
        for start in range(0, len(rows), size):
            batch = {k: v.to(model.device) for k, v in collate(rows[start : start + size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE_INDEX
            picked = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll -= float(picked[mask].sum())
            tokens += int(mask.sum())
        return math.exp(nll / tokens) if tokens and nll / tokens < 50 else float("inf")

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        extra = {f"{metric_key_prefix}_teacher_answer_perplexity": self.teacher_answer_perplexity()}
        self.log(extra)
        return {**metrics, **extra}
