"""Domain vocabulary: train a SentencePiece model on domain text, add its pieces (and a word list) to a BPE tokenizer
(byte-level, or SentencePiece-style with byte fallback) as real BPE tokens, and give the grown embedding rows a
starting point that keeps old text unchanged.

The merged tokenizer records, in its tokenizer_config.json under EXTENSION_KEY, how the base tokenizer split each new
token (`{"base_size": N, "tokens": {id: [base ids]}}`); the record travels with every saved tokenizer, and
`init_new_rows` reads it when a model is loaded with that tokenizer for the first time.
"""

import json
import logging
import re
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
# How a BPE model with byte fallback spells one byte of a character it has no token for.
BYTE_FALLBACK = re.compile(r"<0x[0-9A-F]{2}>")


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


def _mentions(node, kind: str) -> bool:
    """Whether a tokenizer.json component (or any part of a Sequence) is of type `kind`."""
    if isinstance(node, dict):
        return node.get("type") == kind or any(_mentions(v, kind) for v in node.values())
    return isinstance(node, list) and any(_mentions(v, kind) for v in node)


def tokenizer_kind(state: dict) -> str | None:
    """ "byte_level" (BPE over bytes: Qwen, Llama-3, SmolLM, GPT-2), "metaspace" (BPE over characters with "▁" for
    spaces and byte fallback: tokenizers converted from SentencePiece models, Llama-2, Mistral, Baichuan), or None
    for a kind the merge cannot grow."""
    model = state["model"]
    if model["type"] != "BPE":
        return None
    if _mentions(state.get("pre_tokenizer"), "ByteLevel"):
        return "byte_level"
    spaces_as_mark = _mentions(state.get("pre_tokenizer"), "Metaspace") or "▁" in json.dumps(
        state.get("normalizer"), ensure_ascii=False
    )
    return "metaspace" if spaces_as_mark and model.get("byte_fallback") else None


def _metaspace_symbol(state: dict, piece: str) -> str | None:
    """The piece as the BPE model of a "metaspace" tokenizer sees it (spaces as "▁"), or None where a splitting
    Metaspace pre-tokenizer cuts it (a "▁" inside) so that BPE could never produce it."""
    symbol = piece.replace(" ", "▁")
    splitting = bool((state.get("pre_tokenizer") or {}).get("split"))
    return None if splitting and "▁" in symbol[1:] else symbol


def _base_parts(base, symbol: str) -> list[str]:
    """The base model's tokens of `symbol` with each run of byte-fallback tokens ("<0xE9>", ...) turned back into
    its character: BPE starts from characters found in the vocabulary, so a new piece is built from those."""
    parts: list[str] = []
    pending = b""
    for token in base.model.tokenize(symbol):
        value = token.value
        if BYTE_FALLBACK.fullmatch(value):
            pending += bytes([int(value[3:5], 16)])
            try:
                parts.append(pending.decode("utf-8"))
                pending = b""
            except UnicodeDecodeError:
                continue  # a character of several bytes: wait for the rest
        else:
            parts.append(value)
    return parts


def _symbol(kind: str, base, state: dict, piece: str) -> str | None:
    """The piece as the BPE model sees it after normalizing and pre-tokenizing, or None if those would cut it."""
    if kind == "metaspace":
        return _metaspace_symbol(state, piece)
    normalized = base.normalizer.normalize_str(piece) if base.normalizer else piece
    split = base.pre_tokenizer.pre_tokenize_str(normalized)
    return split[0][0] if normalized == piece and len(split) == 1 else None


def _apply_merges(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE with the added merges only: the lowest-ranked adjacent pair first, leftmost on ties. Every added merge
    ranks after every base merge, so applied to the base's tokens this gives the grown tokenizer's tokens."""
    parts = list(parts)
    while len(parts) > 1:
        ranked = [(ranks[pair], i) for i, pair in enumerate(zip(parts, parts[1:], strict=False)) if pair in ranks]
        if not ranked:
            break
        _, i = min(ranked)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


@dataclass
class MergeReport:
    """What happened to each candidate piece."""

    added: list[str] = field(default_factory=list)  # new tokens the pieces asked for
    intermediate: int = 0  # prefixes (and, for metaspace, characters) added so that BPE can build the pieces
    present: int = 0  # already one token of the base
    unreachable: list[str] = field(default_factory=list)  # crossing a pre-tokenizer boundary: BPE could never emit
    conflicting: list[str] = field(default_factory=list)  # needs a base token joined in a way the base never merges


def merge_pieces(tokenizer, pieces: Iterable[str], where: str):
    """A copy of a BPE `tokenizer` (byte-level or metaspace, see tokenizer_kind) whose vocabulary and merges also hold
    `pieces`. Base tokens keep their ids, special tokens are untouched, and new merges rank after every base merge,
    so text without a new token is encoded as before. Each new token is built left to right from the base tokens of
    its text; for a metaspace tokenizer a character the base only had as byte-fallback bytes becomes a token first."""
    from transformers import AutoTokenizer

    base = tokenizer.backend_tokenizer
    state = json.loads(base.to_str())
    kind = tokenizer_kind(state)
    if kind is None:
        raise UserError(
            f"{where} is a {state['model']['type']} tokenizer that is neither byte-level BPE nor BPE with byte "
            "fallback over SentencePiece's '▁' spaces; merging supports those two kinds (Qwen, Llama-3, SmolLM, "
            "GPT-2 style; Llama-2, Mistral, Baichuan style); give one of those."
        )
    vocab: dict[str, int] = state["model"]["vocab"]
    merges: list = state["model"]["merges"]
    as_pairs = not merges or isinstance(merges[0], list)
    base_pairs = {tuple(m) if as_pairs else tuple(m.split(" ", 1)) for m in merges}
    new_ranks: dict[tuple[str, str], int] = {}
    taken = [*vocab.values(), *(t["id"] for t in state.get("added_tokens", []))]
    next_id = max(taken) + 1
    record: dict[str, list[int]] = {}
    report = MergeReport()

    def add_token(text: str) -> None:
        nonlocal next_id
        vocab[text] = next_id
        record[str(next_id)] = [base.token_to_id(t.value) for t in base.model.tokenize(text)]
        next_id += 1

    for piece in dict.fromkeys(pieces):  # first occurrence wins, order kept
        symbol = _symbol(kind, base, state, piece)
        if symbol is None:
            report.unreachable.append(piece)
            continue
        if symbol in vocab:
            report.present += 1
            continue
        # Built from the tokens the grown tokenizer gives it so far, so that merges added for earlier pieces cannot
        # shadow this one (糖+尿 for "糖尿病" before ▁+糖 for "▁糖尿病患者").
        parts = _apply_merges(_base_parts(base, symbol), new_ranks)
        steps, built = [], parts[0]
        for part in parts[1:]:
            steps.append((built, part))
            built += part
        if any(pair not in base_pairs and pair not in new_ranks and "".join(pair) in vocab for pair in steps):
            report.conflicting.append(
                piece
            )  # a base token that BPE builds another way: a merge would change base text
            continue
        for char in parts:
            if char not in vocab:  # a character the base spelt in bytes (metaspace kind only)
                add_token(char)
        for pair in steps:
            if pair not in base_pairs and pair not in new_ranks:
                merges.append(list(pair) if as_pairs else " ".join(pair))
                new_ranks[pair] = len(new_ranks)
                add_token("".join(pair))
        report.added.append(piece)
    report.intermediate = len(record) - len(report.added)
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
