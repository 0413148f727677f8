"""Masks, truncation, pre-training blocks, packing (loss equality) and collation."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from medgpt import tokenization
from medgpt.chat import get_template
from medgpt.tokenization import IGNORE_INDEX, Collator, encode_chat, pack, pack_bins, tokenize_pretrain, tokenize_sft

CHAT = [
    {"role": "system", "content": "You are a careful doctor."},
    {"role": "user", "content": "I have a fever of 38.5°C."},
    {"role": "assistant", "content": "Drink plenty of water and rest."},
    {"role": "user", "content": "患者发热三天，怎么办？"},
    {"role": "assistant", "content": "请多喝水，注意休息。"},
    {"role": "user", "content": "And the cough?"},
    {"role": "assistant", "content": "See a doctor if it gets worse."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    model.config.use_cache = False
    return model


def supervised_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def test_every_assistant_turn_and_its_stop_token_is_supervised(tokenizer):
    template = get_template("chatml")
    ids, labels = encode_chat(tokenizer, template, CHAT, None, 1024)
    assert ids == tokenizer(template.render(CHAT), add_special_tokens=False)["input_ids"]
    assert supervised_text(tokenizer, ids, labels) == (
        "Drink plenty of water and rest.<|im_end|>请多喝水，注意休息。<|im_end|>"
        "See a doctor if it gets worse.<|im_end|>"
    )
    assert labels.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 3


def test_train_on_inputs_supervises_everything(tokenizer):
    ids, labels = encode_chat(tokenizer, get_template("chatml"), CHAT, None, 1024, train_on_inputs=True)
    assert labels == ids


def test_tool_calls_are_trained_and_tool_results_are_not(tokenizer):
    chat = [
        {"role": "user", "content": "Weather in Beijing?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Beijing"}}}
            ],
        },
        {"role": "tool", "content": '{"temp": 20}'},
        {"role": "assistant", "content": "It is 20 degrees."},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    ids, labels = encode_chat(tokenizer, get_template("qwen2.5"), chat, tools, 1024)
    trained = supervised_text(tokenizer, ids, labels)
    assert "get_weather" in trained and "It is 20 degrees." in trained
    assert '"temp": 20' not in trained and "Weather in Beijing" not in trained


def test_truncation_keeps_whole_turns(tokenizer):
    template = get_template("chatml")
    full, _ = encode_chat(tokenizer, template, CHAT, None, 1024)
    first_two, _ = encode_chat(tokenizer, template, CHAT[:5], None, 1024)
    ids, labels = encode_chat(tokenizer, template, CHAT, None, len(full) - 3)
    # The last turn does not fit: the sample ends after the second answer's real stop token.
    assert ids == first_two[: len(ids)] and len(ids) <= len(full) - 3
    assert supervised_text(tokenizer, ids, labels).endswith("请多喝水，注意休息。<|im_end|>")


def test_truncated_first_answer_trains_no_false_stop_token(tokenizer):
    template = get_template("chatml")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Rest and water. " * 40}]
    ids, labels = encode_chat(tokenizer, template, chat, None, 40)
    assert len(ids) == 40
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert any(label != IGNORE_INDEX for label in labels) and stop not in [lab for lab in labels if lab >= 0]


def test_prompt_longer_than_limit_is_dropped(tokenizer):
    template = get_template("chatml")
    long_prompt = [{"role": "user", "content": "fever " * 100}, {"role": "assistant", "content": "Rest."}]
    assert encode_chat(tokenizer, template, long_prompt, None, 32) == ([], [])
    rows = Dataset.from_list([{"messages": json.dumps(c), "tools": ""} for c in (long_prompt, CHAT[1:3])])
    kept = tokenize_sft(rows, tokenizer, template, 32)
    assert len(kept) == 1 and all(any(lab != IGNORE_INDEX for lab in labels) for labels in kept["labels"])


def test_slow_path_without_offsets_gives_the_same_labels(tokenizer, monkeypatch):
    template = get_template("chatml")
    fast = encode_chat(tokenizer, template, CHAT, None, 1024)
    monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    assert encode_chat(tokenizer, template, CHAT, None, 1024) == fast


def test_tokenize_sft_with_workers_and_cache(tokenizer):
    rows = Dataset.from_list([{"messages": json.dumps(CHAT), "tools": ""}] * 8)
    first = tokenize_sft(rows, tokenizer, get_template("chatml"), 256, num_proc=2)
    again = tokenize_sft(rows, tokenizer, get_template("chatml"), 256)
    assert first["input_ids"] == again["input_ids"] and len(first) == 8


def test_pack_bins_fit_and_cover_everything():
    lengths = [5, 9, 3, 7, 2, 8, 1, 6]
    bins = pack_bins(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 5  # sum 41 -> at least 5 bins of 10


def chat_rows(tokenizer) -> Dataset:
    chats = [CHAT, CHAT[1:3], CHAT[:1] + CHAT[3:5], CHAT[5:7]]
    rows = Dataset.from_list([{"messages": json.dumps(c), "tools": ""} for c in chats])
    return tokenize_sft(rows, tokenizer, get_template("chatml"), 512)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked_loss(tiny_model_dir, tokenizer, attention):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention).eval()
    model.config.use_cache = False
    samples = chat_rows(tokenizer)
    packed = pack(samples, 512)
    assert len(packed) < len(samples)
    collate = Collator(tokenizer.pad_token_id)
    with torch.no_grad():
        unpacked_loss = model(**collate(list(samples))).loss
        packed_loss = model(**collate(list(packed))).loss
        flat_loss = model(**Collator(tokenizer.pad_token_id, flatten=True)(list(samples))).loss
    assert torch.allclose(unpacked_loss, packed_loss, atol=1e-5)
    assert torch.allclose(unpacked_loss, flat_loss, atol=1e-5)


def test_packing_with_attention_across_samples_would_differ(tiny_lm, tokenizer):
    """Guards the test above: without restarting positions the same packed row gives another loss."""
    packed = pack(chat_rows(tokenizer), 512)
    batch = Collator(tokenizer.pad_token_id)(list(packed))
    with torch.no_grad():
        isolated = tiny_lm(**batch).loss
        crossing = tiny_lm(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert not torch.allclose(isolated, crossing, atol=1e-4)


def test_pretraining_blocks_restart_positions_and_match_unpacked_loss(tiny_lm, tokenizer):
    docs = Dataset.from_list(
        [
            {"text": t}
            for t in (
                "The patient has a fever.",
                "高血压会增加中风的风险。",
                "Take the antibiotic for the full course.",
            )
        ]
    )
    lengths = [len(tokenizer(d)["input_ids"]) + 1 for d in docs["text"]]
    block = sum(lengths)
    packed = tokenize_pretrain(docs, tokenizer, block, packing=True)
    assert len(packed) == 1
    positions = packed[0]["position_ids"]
    assert positions.count(0) == 3 and positions[lengths[0]] == 0
    unpacked = tokenize_pretrain(docs, tokenizer, block, packing=False)
    assert len(unpacked) == 3 and all(row[-1] == tokenizer.eos_token_id for row in unpacked["input_ids"])
    collate = Collator(tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(
            tiny_lm(**collate(list(packed))).loss, tiny_lm(**collate(list(unpacked))).loss, atol=1e-5
        )


def test_pretraining_block_split_restarts_the_continued_document(tokenizer):
    ids = {"input_ids": [list(range(10, 17)), list(range(20, 26))]}  # 7 + 6 tokens, blocks of 4
    out = tokenization._blocks(ids, 4, packing=True)
    assert out["input_ids"][2] == [21, 22, 23, 24], "the last token, filling no block, is dropped"
    assert out["position_ids"] == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]], "positions restart per document"
    assert out["labels"][1][0] == IGNORE_INDEX and out["labels"][1][3] == IGNORE_INDEX
    chunks = tokenization._blocks(ids, 4, packing=False)["input_ids"]
    assert chunks == [[10, 11, 12, 13], [14, 15, 16], [20, 21, 22, 23], [24, 25]], "unpacked: long docs are split"


def test_collator_pads_with_ignored_labels(tokenizer):
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = Collator(tokenizer.pad_token_id, pad_to_multiple_of=4)(features)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["labels"][1].tolist() == [8, -100, -100, -100]
    assert batch["attention_mask"][1].tolist() == [1, 0, 0, 0]


def test_tokenization_is_cached_on_disk_and_overwrite_cache_redoes_it(tokenizer, tmp_path):
    from pathlib import Path

    from conftest import write_jsonl

    from medgpt.args import DataArguments
    from medgpt.data import load_datasets

    write_jsonl(tmp_path / "d" / "a.jsonl", [{"messages": CHAT}] * 4)
    rows = load_datasets(
        DataArguments(train_file_dir=str(tmp_path / "d"), validation_split_percentage=0),
        "chat",
        cache_dir=str(tmp_path / "cache"),
    )["train"]
    first = tokenize_sft(rows, tokenizer, get_template("chatml"), 256)
    cached = Path(first.cache_files[0]["filename"])
    written = cached.stat().st_mtime_ns
    tokenize_sft(rows, tokenizer, get_template("chatml"), 256)
    assert cached.stat().st_mtime_ns == written, "the second run reads the cache"
    tokenize_sft(rows, tokenizer, get_template("chatml"), 256, overwrite_cache=True)
    assert cached.stat().st_mtime_ns != written, "--overwrite_cache tokenizes again"


def test_count_tokens_leaves_out_the_collators_padding():
    from medgpt.tokenization import count_tokens

    features = [
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8]},
        {"input_ids": [5, 9], "labels": [IGNORE_INDEX, 9]},
    ]
    padded = Collator(pad_token_id=0, pad_to_multiple_of=8)(features)
    assert count_tokens(padded, 0) == (6, 3)
    packed = [{**f, "position_ids": list(range(len(f["input_ids"])))} for f in features]
    assert count_tokens(Collator(pad_token_id=0, pad_to_multiple_of=8)(packed), 0) == (6, 3)
    assert count_tokens(Collator(pad_token_id=0, flatten=True)(features), 0) == (6, 3)
    # eos used as padding: an answer's own final eos has a label and stays counted
    eos_end = [{"input_ids": [5, 6, 2], "labels": [IGNORE_INDEX, 6, 2], "position_ids": [0, 1, 2]}]
    assert count_tokens(Collator(pad_token_id=2, pad_to_multiple_of=8)(eos_end), 2) == (3, 2)
