"""Train a domain SentencePiece model (BPE or unigram) on domain text, the first step of growing a vocabulary.

    python tools/build_domain_tokenizer.py --in_file data/pretrain --domain_sp_model_name outputs/vocab/domain_sp \
        --vocab_size 2000 --model_type BPE

--in_file is a text file, a data file of any kind training reads (PT text, SFT chats, pairs, prompts: every text of a
row is used) or a folder of them. Writes NAME.model and NAME.vocab; next: tools/merge_tokenizers.py
(docs/vocabulary.md).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.datatools.sources import data_files, file_kind, parts, read_file
from medgpt.errors import UserError, run_cli
from medgpt.formats import ReadReport
from medgpt.vocabulary import train_domain_model


@dataclass
class DomainTokenizerArguments:
    in_file: str = field(metadata={"help": "Domain text: a file or folder (.txt/.json/.jsonl, any row kind)."})
    domain_sp_model_name: str = field(default="domain_sp", metadata={"help": "Output prefix: NAME.model, NAME.vocab."})
    vocab_size: int = field(default=2236, metadata={"help": "Pieces to learn (fewer when the text is small)."})
    model_type: str = field(default="BPE", metadata={"help": "BPE or unigram."})
    character_coverage: float = field(default=0.9995, metadata={"help": "Share of characters covered (CJK: 0.9995)."})
    user_defined_symbols: str = field(default="", metadata={"help": "Comma list of pieces always kept whole."})
    max_sentence_length: int = field(default=16384, metadata={"help": "Longer lines are skipped by SentencePiece."})
    pad_id: int = field(default=3, metadata={"help": "Id of the pad piece (-1: none)."})


def main(argv: list[str] | None = None) -> Path:
    (build_args,) = args.parse((DomainTokenizerArguments,), argv)
    if build_args.model_type.lower() not in ("bpe", "unigram"):
        raise UserError(f"--model_type {build_args.model_type}: give BPE or unigram.")
    if build_args.vocab_size < 8:
        raise UserError(f"--vocab_size {build_args.vocab_size}: give a positive size, e.g. 2000.")
    report = ReadReport()
    texts = [
        line
        for path in data_files([build_args.in_file], "--in_file")
        for row in read_file(path, file_kind(path, None), False, report)
        for text in parts(row)
        for line in text.splitlines()
        if line.strip()
    ]
    if not texts:
        raise UserError(f"--in_file {build_args.in_file}: no text found to train on.")
    Path(build_args.domain_sp_model_name).parent.mkdir(parents=True, exist_ok=True)
    symbols = [s for s in build_args.user_defined_symbols.split(",") if s]
    model = train_domain_model(
        texts,
        build_args.domain_sp_model_name,
        build_args.vocab_size,
        build_args.model_type,
        build_args.character_coverage,
        symbols,
        build_args.max_sentence_length,
        build_args.pad_id,
    )
    print(json.dumps({"lines": len(texts), "model": str(model), "vocab": str(model.with_suffix(".vocab"))}))
    return model


if __name__ == "__main__":
    run_cli(main)
