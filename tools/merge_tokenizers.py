"""Add domain pieces (a SentencePiece model from tools/build_domain_tokenizer.py) and words (a term list, one per
line) to a base model's BPE tokenizer (byte-level, or SentencePiece-style with byte fallback). Base tokens keep their
ids and special tokens are untouched.

    python tools/merge_tokenizers.py --base_tokenizer_dir models/SmolLM2-135M-Instruct \
        --domain_sp_model_file outputs/vocab/domain_sp.model --word_file data/vocab/medical_terms_zh.txt \
        --held_out_file data/eval/pretrain/heldout.txt --output_dir outputs/vocab/merged_tokenizer

Prints how many tokens were added and the tokens per character before and after on --held_out_file. Then continue
pre-training with `pretraining.py --tokenizer_name_or_path OUTPUT_DIR` (docs/vocabulary.md).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from medgpt import args
from medgpt.atomic import staged_folder
from medgpt.errors import UserError, run_cli
from medgpt.vocabulary import merge_pieces, read_word_file, sentencepiece_pieces, tokens_per_char


@dataclass
class MergeTokenizerArguments:
    base_tokenizer_dir: str = field(metadata={"help": "The base model's folder (or its tokenizer's)."})
    domain_sp_model_file: str | None = field(default=None, metadata={"help": "SentencePiece model to add."})
    word_file: str | None = field(default=None, metadata={"help": "Words to add, one per line (e.g. medical terms)."})
    baichuan_vocab_file: str | None = field(default=None, metadata={"help": "MedicalGPT's name: another word list."})
    add_jieba: bool = field(default=False, metadata={"help": "Also add the top words of --jieba_word_freq_file."})
    jieba_word_freq_file: str | None = field(default=None, metadata={"help": "'word freq' lines, top first."})
    jieba_word_size: int = field(default=20000, metadata={"help": "How many words of --jieba_word_freq_file."})
    held_out_file: str | None = field(default=None, metadata={"help": "Text for the tokens-per-character figures."})
    output_dir: str = field(default="merged_tokenizer_hf", metadata={"help": "Folder for the merged tokenizer."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output_dir."})


def main(argv: list[str] | None = None) -> dict:
    (merge_args,) = args.parse((MergeTokenizerArguments,), argv)
    if Path(merge_args.output_dir).exists() and not merge_args.overwrite:
        raise UserError(f"--output_dir {merge_args.output_dir} exists; pass --overwrite True to replace it.")
    if merge_args.add_jieba and not merge_args.jieba_word_freq_file:
        raise UserError("--add_jieba needs --jieba_word_freq_file FILE ('word freq' per line).")
    try:
        base = AutoTokenizer.from_pretrained(merge_args.base_tokenizer_dir)
    except (OSError, ValueError) as err:
        raise UserError(f"--base_tokenizer_dir {merge_args.base_tokenizer_dir}: no tokenizer there ({err}).") from None
    pieces = sentencepiece_pieces(merge_args.domain_sp_model_file) if merge_args.domain_sp_model_file else []
    for flag in ("word_file", "baichuan_vocab_file"):
        if getattr(merge_args, flag):
            pieces += read_word_file(getattr(merge_args, flag), f"--{flag}", base.all_special_tokens)
    if merge_args.add_jieba:
        words = read_word_file(merge_args.jieba_word_freq_file, "--jieba_word_freq_file", base.all_special_tokens)
        pieces += words[: merge_args.jieba_word_size]
    if not pieces:
        raise UserError("nothing to add: give --domain_sp_model_file and/or --word_file.")
    merged, report = merge_pieces(base, pieces, f"--base_tokenizer_dir {merge_args.base_tokenizer_dir}")
    with staged_folder(merge_args.output_dir) as staging:
        merged.save_pretrained(staging)
    summary = {
        "base_tokens": len(base),
        "merged_tokens": len(merged),
        "pieces_added": len(report.added),
        "prefix_tokens_added": report.intermediate,
        "already_in_base": report.present,
        "skipped_crossing_pre_tokenizer": len(report.unreachable),
        "skipped_base_merge_order": len(report.conflicting),
        "output_dir": merge_args.output_dir,
    }
    if merge_args.held_out_file:
        text = Path(merge_args.held_out_file).read_text(encoding="utf-8")
        summary["tokens_per_char_before"] = round(tokens_per_char(base, text), 4)
        summary["tokens_per_char_after"] = round(tokens_per_char(merged, text), 4)
        summary["decodes_exactly"] = merged.decode(merged.encode(text, add_special_tokens=False)) == text
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return summary


if __name__ == "__main__":
    run_cli(main)
