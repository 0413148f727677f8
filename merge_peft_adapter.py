"""Fold a LoRA adapter into its base model: a standalone model (causal LM or reward model) for the next stage.

The tokenizer (with the chat_template the adapter was trained with) and the template name are carried over,
and the merged logits are checked against the adapter model on one sample before anything is saved.

    python merge_peft_adapter.py --base_model Qwen/Qwen2.5-0.5B-Instruct --lora_model outputs-sft \
        --output_dir merged-sft
    python merge_peft_adapter.py --base_model merged-sft --lora_model outputs-rm --output_dir merged-rm --dtype float32
"""

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig

from medgpt import args, atomic
from medgpt.chat import read_template_name, save_template
from medgpt.errors import UserError, run_cli
from medgpt.model import load_saved, saved_task

logger = logging.getLogger(__name__)


@dataclass
class MergeArguments:
    base_model: str = field(metadata={"help": "Base model the adapter was trained on (folder or hub id)."})
    lora_model: str = field(metadata={"help": "Folder of the LoRA adapter (adapter_config.json)."})
    output_dir: str = field(default="./merged", metadata={"help": "Where the merged model is written."})
    tokenizer_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to save with it; default: the adapter's, else the base's."}
    )
    resize_emb: bool = field(
        default=False,
        metadata={
            "help": "Grow the base embeddings to the tokenizer first (needed when training grew the vocabulary)."
        },
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto",
        metadata={
            "help": "Dtype the merged weights are saved in (auto = the base checkpoint's). "
            "The merge itself runs in float32."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --output_dir."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint."})


def check_paths(merge_args: MergeArguments) -> None:
    if not Path(merge_args.lora_model, "adapter_config.json").is_file():
        raise UserError(
            f"--lora_model {merge_args.lora_model} holds no adapter_config.json; point it at the "
            "output_dir of a LoRA training run (or its checkpoint-N folder)."
        )
    out = Path(merge_args.output_dir)
    if out.exists() and any(out.iterdir()) and not merge_args.overwrite:
        raise UserError(f"--output_dir {out} is not empty; choose a new folder or pass --overwrite True.")
    if out.resolve() in (Path(merge_args.base_model).resolve(), Path(merge_args.lora_model).resolve()):
        raise UserError(f"--output_dir {out} must differ from --base_model and --lora_model.")


def checkpoint_dtype(config) -> torch.dtype:
    """The dtype the base checkpoint was stored in (float32 when it does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def check_sample(tokenizer) -> dict[str, torch.Tensor]:
    messages = [
        {"role": "user", "content": "What helps a fever? 发烧怎么办？"},
        {"role": "assistant", "content": "Rest."},
    ]
    text = (
        tokenizer.apply_chat_template(messages, tokenize=False) if tokenizer.chat_template else messages[0]["content"]
    )
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)


def main(argv: list[str] | None = None) -> Path:
    (merge_args,) = args.parse((MergeArguments,), argv)
    check_paths(merge_args)
    reward = saved_task(merge_args.base_model, merge_args.lora_model) == "reward"
    # Merge in fp32 so the check is exact and the weights are rounded once, when saved in the target dtype.
    model, tokenizer, _ = load_saved(
        merge_args.base_model,
        merge_args.lora_model,
        task="reward" if reward else "causal",
        tokenizer_path=merge_args.tokenizer_path,
        padding_side="right",
        torch_dtype="float32",
        resize_emb=merge_args.resize_emb,
        trust_remote_code=merge_args.trust_remote_code,
    )
    stored = AutoConfig.from_pretrained(merge_args.base_model, trust_remote_code=merge_args.trust_remote_code)
    saved_dtype = checkpoint_dtype(stored) if merge_args.dtype == "auto" else getattr(torch, merge_args.dtype)

    sample = check_sample(tokenizer)
    with torch.no_grad():
        expected = model(**sample).logits.float()
        merged = model.merge_and_unload()
        got = merged(**sample).logits.float()
    difference = (got - expected).abs().max().item()
    tolerance = 1e-4 * (expected.abs().max().item() + 1.0)
    print(
        f"merge check: max |merged - adapter| {'score' if reward else 'logit'} difference = {difference:.3g} "
        f"(tolerance {tolerance:.3g})"
    )
    if not difference <= tolerance:
        raise RuntimeError(
            f"merged model differs from the adapter model by {difference:.3g} > {tolerance:.3g}; "
            "nothing was saved. Check that --base_model is the model the adapter was trained on."
        )

    # Write into a temporary sibling folder and move it into place, so a failure leaves no half-written model.
    out = Path(merge_args.output_dir)
    with atomic.staged_folder(out) as staging:
        merged.to(saved_dtype).save_pretrained(staging, max_shard_size="5GB")
        tokenizer.save_pretrained(staging)
        name, tool_format = read_template_name(merge_args.lora_model)
        if name:
            save_template(staging, name, tool_format)
        if merge_args.trust_remote_code and Path(merge_args.base_model).is_dir():
            for code in Path(merge_args.base_model).glob("*.py"):  # remote-code models need their modelling files
                shutil.copy(code, staging)
    print(f"merged model saved to {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
