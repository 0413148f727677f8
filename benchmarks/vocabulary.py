"""Domain vocabulary on a real model: tokens per character before and after the merge, the step-0 loss of the grown
model (old text; new-token text with mean and with random rows), the peak memory of the two ways to train the
new rows, and the held-out Chinese loss before and after continued pre-training of the new rows (then merged with
--resize_emb). Prints figures; asserts nothing.

    python tools/prepare_model.py --output_dir models/SmolLM2-135M-Instruct --dtype float32
    python benchmarks/vocabulary.py --model models/SmolLM2-135M-Instruct --steps 4 --pt_epochs 2

Domain text: the project's pre-training notes (data/pretrain); held out: the Chinese and the English paragraphs of
data/eval/pretrain. Each training option runs pretraining.py in its own process; its peak RSS is read from wait4.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from scratch import KEEP_HELP, scratch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medgpt import vocabulary

ROOT = Path(__file__).resolve().parents[1]
CJK = re.compile(r"[\u4e00-\u9fff]")


def nats(model, tokenizer, text: str) -> tuple[float, int]:
    """Summed loss over the whole text (windows of 1024 tokens) and the number of tokens predicted."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 1024):
            window = torch.tensor([ids[start : start + 1024]])
            if window.shape[1] > 1:
                total += model(window, labels=window).loss.item() * (window.shape[1] - 1)
                count += window.shape[1] - 1
    return total, count


def loss(model, tokenizer, text: str) -> float:
    total, count = nats(model, tokenizer, text)
    return total / count


def peak_rss_mib(argv: list[str]) -> float:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024


def heldout(model_dir, tokenizer, text: str) -> str:
    """Loss per token and bits per character (comparable across tokenizers) of `text` under a saved model."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    vocabulary.grow_embeddings(model, tokenizer)  # a no-op for a merged model and for the base tokenizer
    total, count = nats(model, tokenizer, text)
    return f"{total / count:.3f} nats/token, {total / len(text) / math.log(2):.3f} bits/char"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--vocab_size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pt_epochs", type=float, default=2, help="Continued pre-training for the held-out loss.")
    parser.add_argument("--keep_work", action="store_true", help=KEEP_HELP)
    options = parser.parse_args()
    with scratch("vocab-bench-", keep=options.keep_work) as work:
        py = sys.executable
        subprocess.run(
            [py, "tools/build_domain_tokenizer.py", "--in_file", "data/pretrain", "--domain_sp_model_name",
             str(work / "sp"), "--vocab_size", str(options.vocab_size)],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        lines = (ROOT / "data/eval/pretrain/heldout.txt").read_text(encoding="utf-8").splitlines()
        chinese = "\n".join(line for line in lines if CJK.search(line))
        english = "\n".join(line for line in lines if line.strip() and not CJK.search(line))
        (work / "zh.txt").write_text(chinese, encoding="utf-8")
        merge = subprocess.run(
            [py, "tools/merge_tokenizers.py", "--base_tokenizer_dir", options.model, "--domain_sp_model_file",
             str(work / "sp.model"), "--word_file", "data/vocab/medical_terms_zh.txt", "--held_out_file",
             str(work / "zh.txt"), "--output_dir", str(work / "merged")],
            check=True, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        print("merge:", merge.stdout)
        base_tok, merged = AutoTokenizer.from_pretrained(options.model), AutoTokenizer.from_pretrained(work / "merged")
        print(f"English held-out tokens/char: {vocabulary.tokens_per_char(base_tok, english):.4f} -> "
              f"{vocabulary.tokens_per_char(merged, english):.4f}")  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32).eval()
        base_en, base_zh = loss(model, base_tok, english), loss(model, base_tok, chinese)
        vocabulary.grow_embeddings(model, merged)
        # Old text in old tokens: what the new rows can change is only the softmax share they take.
        grown_en, merged_en = loss(model, base_tok, english), loss(model, merged, english)
        mean_zh = loss(model, merged, chinese)
        random_model = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32).eval()
        random_model.resize_token_embeddings(len(merged), pad_to_multiple_of=64, mean_resizing=False)
        random_zh = loss(random_model, merged, chinese)
        print(f"step-0 loss, English held-out (old tokens): base {base_en:.5f}, grown {grown_en:.5f}, "
              f"difference {grown_en - base_en:+.2e} nats; "
              f"encoded with the merged tokenizer {merged_en:.5f}")  # fmt: skip
        print(f"step-0 loss, Chinese held-out: base tokenizer {base_zh:.3f}; "
              f"merged tokenizer with mean-initialised rows "
              f"{mean_zh:.3f}, with random rows {random_zh:.3f} (per token)")  # fmt: skip
        common = [py, "pretraining.py", "--model_name_or_path", options.model, "--tokenizer_name_or_path",
                  str(work / "merged"), "--train_file_dir", "data/pretrain", "--block_size", "256",
                  "--per_device_train_batch_size", "2", "--save_strategy", "no",
                  "--report_to", "none", "--validation_split_percentage", "0", "--disable_tqdm", "True"]  # fmt: skip
        figures = {}
        for name, flags in (
            ("--train_new_token_rows True", ["--train_new_token_rows", "True"]),
            ("--modules_to_save embed_tokens,lm_head", ["--modules_to_save", "embed_tokens,lm_head"]),
        ):
            out = ["--output_dir", str(work / name.split()[0].strip("-"))]
            figures[name] = peak_rss_mib([*common, "--max_steps", str(options.steps), *flags, *out])
            print(f"peak RSS with {name}: {figures[name]:.0f} MiB ({options.steps} steps, block 256, batch 2)")
        print(json.dumps(figures))
        if options.pt_epochs:
            adapter, grown = work / "pt-new-rows", work / "pt-new-rows-merged"
            pt = [*common, "--num_train_epochs", str(options.pt_epochs)]
            subprocess.run(
                [*pt, "--train_new_token_rows", "True", "--learning_rate", "2e-4", "--output_dir", str(adapter)],
                check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            subprocess.run(
                [py, "merge_peft_adapter.py", "--base_model", options.model, "--lora_model", str(adapter),
                 "--output_dir", str(grown), "--resize_emb"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            print(f"held-out Chinese, base model and tokenizer: {heldout(options.model, base_tok, chinese)}")
            print(f"held-out Chinese, grown model at step 0: {heldout(options.model, merged, chinese)}")
            print(f"held-out Chinese, after {options.pt_epochs:g} epochs of new-row PT, merged: "
                  f"{heldout(grown, merged, chinese)}")  # fmt: skip


if __name__ == "__main__":
    main()
