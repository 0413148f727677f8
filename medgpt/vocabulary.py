"""Domain vocabulary: train a SentencePiece model on domain text, add its pieces (and a word list) to a byte-level BPE
tokenizer as real BPE tokens, and give the grown embedding rows a starting point that keeps old text unchanged.

The merged tokenizer records, in its tokenizer_config.json under EXTENSION_KEY, how the base tokenizer split each new
token (`{"base_size": N, "tokens": {id: [base ids]}}`); the record travels with every saved tokenizer, and
`init_new_rows` reads it when a model is loaded with that tokenizer for the first time.
"""

import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medgpt.errors import UserError

logger = logging.getLogger(__name__)

EXTENSION_KEY = "extended_vocabulary"
# Saved in the model's config once its new rows are initialised, so a merged model is not initialised twice.
CONFIG_MARK = "extended_vocabulary_initialised"
# Embedding matrices are resized to a multiple of this (tensor cores and most kernels like multiples of 64).
ROW_MULTIPLE = 64


def train_domain_model(
    texts: Iterable[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    user_defined_symbols: list[str],
    max_sentence_length: int,
    pad_id: int,
) -> Path:
    """Train a SentencePiece model on `texts` (one sentence or paragraph each); returns MODEL_PREFIX.model."""
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type.lower(),
            character_coverage=character_coverage,
            user_defined_symbols=user_defined_symbols,
            max_sentence_length=max_sentence_length,
            pad_id=pad_id,
            split_digits=True,
            byte_fallback=True,
            normalization_rule_name="nfkc",
            hard_vocab_limit=False,  # a small corpus gives fewer pieces instead of failing
            minloglevel=2,
        )
    except RuntimeError as err:
        raise UserError(f"SentencePiece could not train on this text: {str(err).strip().splitlines()[-1]}") from None
    return Path(f"{model_prefix}.model")


def sentencepiece_pieces(model_file: str) -> list[str]:
    """The learned pieces of a SentencePiece model (normal and user-defined; no control, unknown or byte pieces),
    with its word-start mark "▁" turned into the space it stands for."""
    import sentencepiece as spm

    if not Path(model_file).is_file():
        raise UserError(f"--domain_sp_model_file {model_file}: file not found.")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(model_file)
    except (OSError, RuntimeError):
        raise UserError(f"--domain_sp_model_file {model_file}: not a SentencePiece model.") from None
    pieces = []
    for i in range(processor.GetPieceSize()):
        if processor.IsControl(i) or processor.IsUnknown(i) or processor.IsByte(i) or processor.IsUnused(i):
            continue
        piece = processor.IdToPiece(i).replace("▁", " ")
        if piece.strip():
            pieces.append(piece)
    return pieces


def read_word_file(path: str, flag: str, special_tokens: Iterable[str]) -> list[str]:
    """One word per line. Empty lines and special tokens are errors naming the line (they would be silent no-ops or
    break chat formats)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{flag} {path}: file not found.")
    special = set(special_tokens)
    words = []
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        word = line.split("\t")[0].split(" ")[0] if flag == "--jieba_word_freq_file" else line.strip()
        if not word:
            raise UserError(f"{path}:{number}: empty line; give one word per line (remove the empty lines).")
        if word in special or (word.startswith("<") and word.endswith(">")) or word.startswith("<|"):
            raise UserError(
                f"{path}:{number}: {word!r} looks like a special token; a word list adds ordinary text tokens only."
            )
        words.append(word)
    return words


def _byte_level(state: dict) -> bool:
    def has(node) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        return isinstance(node, list) and any(has(v) for v in node)

    return state["model"]["type"] == "BPE" and has(state.get("pre_tokenizer"))


@dataclass
class MergeReport:
    """What happened to each candidate piece."""

    added: list[str] = field(default_factory=list)  # new tokens the pieces asked for
    intermediate: int = 0  # prefixes added so that BPE can build the pieces
    present: int = 0  # already one token of the base
    unreachable: list[str] = field(default_factory=list)  # crossing a pre-tokenizer boundary: BPE could never emit


def merge_pieces(tokenizer, pieces: Iterable[str], where: str):
    """A copy of a byte-level BPE `tokenizer` whose vocabulary and merges also hold `pieces`. Base tokens keep their
    ids, special tokens are untouched, and new merges rank after every base merge, so text without a new token is
    encoded as before. Each new token is built left to right from the base tokens of its text."""
    from transformers import AutoTokenizer

    base = tokenizer.backend_tokenizer
    state = json.loads(base.to_str())
    if not _byte_level(state):
        raise UserError(
            f"{where} is a {state['model']['type']} tokenizer without byte-level pre-tokenization; merging supports "
            "byte-level BPE tokenizers (Qwen, Llama-3, SmolLM, GPT-2 style); give one of those."
        )
    vocab: dict[str, int] = state["model"]["vocab"]
    merges: list = state["model"]["merges"]
    as_pairs = not merges or isinstance(merges[0], list)
    taken = [*vocab.values(), *(t["id"] for t in state.get("added_tokens", []))]
    next_id = max(taken) + 1
    record: dict[str, list[int]] = {}
    report = MergeReport()
    for piece in dict.fromkeys(pieces):  # first occurrence wins, order kept
        normalized = base.normalizer.normalize_str(piece) if base.normalizer else piece
        split = base.pre_tokenizer.pre_tokenize_str(normalized)
        if normalized != piece or len(split) != 1:
            report.unreachable.append(piece)
            continue
        symbol = split[0][0]
        if symbol in vocab:
            report.present += 1
            continue
        parts = [t.value for t in base.model.tokenize(symbol)]
        built = parts[0]
        for part in parts[1:]:
            joined = built + part
            if joined not in vocab:
                merges.append([built, part] if as_pairs else f"{built} {part}")
                vocab[joined] = next_id
                record[str(next_id)] = [base.token_to_id(t.value) for t in base.model.tokenize(joined)]
                next_id += 1
                report.intermediate += joined != symbol
            built = joined
        report.added.append(piece)
    earlier = (tokenizer.init_kwargs.get(EXTENSION_KEY) or {}).get("tokens", {})
    extension = {"base_size": len(tokenizer), "tokens": {**earlier, **record}}
    # Saved and reloaded with the grown tokenizer.json, so that everything else (class, special tokens, chat
    # template, padding side) is the base's own.
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        (Path(folder) / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        config_file = Path(folder) / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config[EXTENSION_KEY] = extension
        config_file.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
        merged = AutoTokenizer.from_pretrained(folder)
    return merged, report


def tokens_per_char(tokenizer, text: str) -> float:
    """Tokens per character of `text` (no special tokens): lower is cheaper."""
    return len(tokenizer.encode(text, add_special_tokens=False)) / max(1, len(text))


def new_token_ids(tokenizer) -> list[int]:
    """Ids the merge added (empty for a tokenizer that was never grown)."""
    record = tokenizer.init_kwargs.get(EXTENSION_KEY) or {}
    return sorted(int(i) for i in record.get("tokens", {}))


def grow_embeddings(model, tokenizer) -> None:
    """Resize to cover the tokenizer (to a multiple of ROW_MULTIPLE) and initialise the rows of the merged tokens
    as the mean of their base sub-token rows, input and output embeddings alike. Padding rows get the mean of all
    old rows. Done once per model: the config keeps a mark that travels with the saved model."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    resized = len(tokenizer) > old_rows
    if resized:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=ROW_MULTIPLE, mean_resizing=False)
    record = tokenizer.init_kwargs.get(EXTENSION_KEY) or {}
    tokens = {int(i): ids for i, ids in record.get("tokens", {}).items()}
    if getattr(model.config, CONFIG_MARK, None) == len(tokens):
        tokens = {}  # initialised before (a merged model) or nothing to initialise
    if not resized and not tokens:
        return
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            if resized:
                weight[old_rows:] = weight[:old_rows].mean(dim=0)
            for token_id, base_ids in tokens.items():
                weight[token_id] = weight[base_ids].mean(dim=0)
    if tokens:
        setattr(model.config, CONFIG_MARK, len(tokens))
        logger.info("initialised %d new token rows from their base sub-tokens", len(tokens))


def trainable_rows(model, tokenizer) -> list[int] | dict[str, list[int]]:
    """PEFT's trainable_token_indices for the merged tokens: the input embedding rows, and the output rows too when
    the output embeddings are not tied to the input ones."""
    ids = new_token_ids(tokenizer)
    if not ids:
        raise UserError(
            "--train_new_token_rows: the tokenizer adds no tokens (it was not made by tools/merge_tokenizers.py); "
            "give --tokenizer_name_or_path MERGED_TOKENIZER or leave the flag out."
        )
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return ids if tied else {"embed_tokens": ids, "lm_head": ids}
