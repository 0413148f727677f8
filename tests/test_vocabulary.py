"""Domain vocabulary: build a SentencePiece model, merge it and a term list into the tiny byte-level BPE tokenizer,
grow the model's embeddings from the sub-token rows, pre-train only the new rows, merge, then use the result."""

import json
import re
from pathlib import Path

import pytest
import torch
from tiny_model import build_tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import evaluate_model
import inference
import merge_peft_adapter
import pretraining
import supervised_finetuning
from medgpt import vocabulary
from medgpt.args import ModelArguments
from medgpt.errors import UserError
from medgpt.model import load_model
from tools import build_domain_tokenizer, merge_tokenizers

ROOT = Path(__file__).resolve().parents[1]
CHINESE = "糖尿病患者应定期监测血糖，并在医生指导下调整胰岛素剂量。高血压患者要限盐。"
ENGLISH = "Hypertension is a long-term condition; regular measurement of blood pressure matters."


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vocab")
    sp = build_domain_tokenizer.main(
        [
            "--in_file",
            str(ROOT / "data" / "pretrain"),
            "--domain_sp_model_name",
            str(out / "sp"),
            "--vocab_size",
            "1500",
        ]
    )
    held_out = out / "held_out.txt"
    held_out.write_text(CHINESE, encoding="utf-8")
    summary = merge_tokenizers.main(
        [
            "--base_tokenizer_dir", str(tiny_model_dir), "--domain_sp_model_file", str(sp),
            "--word_file", str(ROOT / "data" / "vocab" / "medical_terms_zh.txt"),
            "--held_out_file", str(held_out), "--output_dir", str(out / "merged"),
        ]
    )  # fmt: skip
    assert summary["pieces_added"] > 50 and summary["decodes_exactly"]
    assert summary["tokens_per_char_after"] < 0.7 * summary["tokens_per_char_before"]
    return out / "merged"


def test_merged_tokenizer_keeps_base_ids_and_special_tokens(tiny_model_dir, merged_dir):
    base, merged = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(merged_dir)
    assert type(merged) is type(base) and json.loads(merged.backend_tokenizer.to_str())["model"]["type"] == "BPE"
    # Text without a new piece is encoded as before: the Chinese terms alone are added, English text is unchanged.
    terms = vocabulary.read_word_file(str(ROOT / "data" / "vocab" / "medical_terms_zh.txt"), "--word_file", [])
    terms_only, report = vocabulary.merge_pieces(base, terms, "tiny")
    assert len(report.added) == len(terms)
    for text in (ENGLISH, "Take 2 tablets.\n<|im_start|>user\nhi<|im_end|>"):
        assert terms_only.encode(text) == base.encode(text)
    assert len(terms_only.encode("糖尿病")) == 1
    # With the domain pieces too, no piece's merges shadow a term's (糖+尿 for 糖尿病 before ▁糖 for ▁糖尿病患者).
    assert all(len(merged.encode(term, add_special_tokens=False)) == 1 for term in terms)
    assert base.get_vocab().items() <= merged.get_vocab().items()  # every base token keeps its id
    assert merged.all_special_tokens == base.all_special_tokens and merged.all_special_ids == base.all_special_ids
    assert merged.chat_template == base.chat_template
    ids = merged.encode(CHINESE, add_special_tokens=False)
    assert merged.decode(ids) == CHINESE and len(ids) < len(base.encode(CHINESE, add_special_tokens=False))
    assert vocabulary.new_token_ids(merged) == list(range(len(base), len(merged)))


def test_sentencepiece_style_tokenizer_stays_one(tmp_path):
    """A Llama-2-style tokenizer (BPE over characters, '▁' for spaces, byte fallback), made offline from a
    SentencePiece model that never saw some of the terms' characters, grows as that kind."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    english = [line for line in (ROOT / "data" / "pretrain" / "medical_notes.txt").read_text().splitlines() if line]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(english), model_prefix=str(tmp_path / "base"), vocab_size=700, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    (tmp_path / "llama").mkdir()
    (tmp_path / "base.model").rename(tmp_path / "llama" / "tokenizer.model")
    LlamaTokenizer.from_pretrained(tmp_path / "llama").save_pretrained(tmp_path / "llama")
    base = AutoTokenizer.from_pretrained(tmp_path / "llama")
    assert vocabulary.tokenizer_kind(json.loads(base.backend_tokenizer.to_str())) == "metaspace"
    terms = vocabulary.read_word_file(str(ROOT / "data" / "vocab" / "medical_terms_zh.txt"), "--word_file", [])
    rare = "".join(c for c in "".join(terms) if c not in base.get_vocab())
    assert rare, "the base must spell some term characters in bytes for this test"
    merged, report = vocabulary.merge_pieces(base, [*terms, " blood pressure"], "llama")
    assert type(merged) is type(base) and vocabulary.tokenizer_kind(json.loads(merged.backend_tokenizer.to_str()))
    assert len(report.added) == len(terms) + 1 and not report.unreachable and not report.conflicting
    assert base.get_vocab().items() <= merged.get_vocab().items()
    for term in terms:  # each term is one token, mid-sentence and after a space
        assert merged.tokenize(f"患者{term}")[-1] == term
    assert merged.tokenize("normal blood pressure")[-1] == "▁blood▁pressure"
    record = merged.init_kwargs[vocabulary.EXTENSION_KEY]["tokens"]
    char = merged.convert_tokens_to_ids(rare[0])  # a character the base had as bytes is now a token of its own
    assert [base.convert_ids_to_tokens(i) for i in record[str(char)]] == [f"<0x{b:02X}>" for b in rare[0].encode()]
    for text in (ENGLISH.replace("blood ", ""), "Take 2 tablets.\n"):  # no new token inside
        assert merged.encode(text) == base.encode(text)
    ids = merged.encode(CHINESE, add_special_tokens=False)
    assert merged.decode(ids) == CHINESE and len(ids) < 0.8 * len(base.encode(CHINESE, add_special_tokens=False))


def test_new_rows_start_at_their_sub_token_mean(tiny_model_dir, merged_dir, tmp_path):
    merged = AutoTokenizer.from_pretrained(merged_dir)
    record = merged.init_kwargs[vocabulary.EXTENSION_KEY]["tokens"]
    for architecture in ("qwen2", "llama"):  # tied and untied output embeddings
        model_dir = (
            tiny_model_dir
            if architecture == "qwen2"
            else build_tiny_model(tmp_path / "llama", architecture=architecture)
        )
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        grown = load_model(ModelArguments(model_name_or_path=str(model_dir), device_map="cpu"), None, merged)
        rows = grown.get_input_embeddings().weight
        assert rows.shape[0] % vocabulary.ROW_MULTIPLE == 0 and rows.shape[0] >= len(merged)
        for weight, old in ((rows, base.get_input_embeddings().weight), (grown.lm_head.weight, base.lm_head.weight)):
            for token_id, base_ids in list(record.items())[:20]:
                torch.testing.assert_close(weight[int(token_id)], old[base_ids].mean(dim=0))
        ids = torch.tensor([AutoTokenizer.from_pretrained(model_dir).encode(ENGLISH)])  # old text in old tokens
        with torch.no_grad():  # old text: the same hidden states and the same logits over the old vocabulary
            old_logits, new_logits = base(ids).logits, grown(ids).logits
        assert torch.equal(new_logits[..., : old_logits.shape[-1]], old_logits)


def test_bad_inputs_are_named(tiny_model_dir, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("糖尿病\n\n高血压\n", encoding="utf-8")
    argv = ["--base_tokenizer_dir", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UserError, match=re.escape(f"{words}:2: empty line")):
        merge_tokenizers.main([*argv, "--word_file", str(words)])
    words.write_text("糖尿病\n<|im_end|>\n", encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(f"{words}:2: '<|im_end|>' looks like a special token")):
        merge_tokenizers.main([*argv, "--word_file", str(words)])
    word_piece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    word_piece.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word_piece, unk_token="[UNK]").save_pretrained(tmp_path / "wp")
    words.write_text("糖尿病\n", encoding="utf-8")
    with pytest.raises(
        UserError, match="WordPiece tokenizer that is neither byte-level BPE nor BPE with byte fallback"
    ):
        merge_tokenizers.main(["--base_tokenizer_dir", str(tmp_path / "wp"), "--word_file", str(words)])
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="--train_new_token_rows trains the new rows only"):
        pretraining.main(
            ["--model_name_or_path", "x", "--train_new_token_rows", "True", "--modules_to_save", "embed_tokens"]
        )


def test_pretrain_new_rows_then_merge_and_evaluate(tiny_model_dir, merged_dir, tmp_path):
    text = tmp_path / "pt" / "zh.txt"
    text.parent.mkdir()
    text.write_text("\n".join([CHINESE] * 40), encoding="utf-8")
    out = tmp_path / "out"
    trainer = pretraining.main(
        [
            "--model_name_or_path", str(tiny_model_dir), "--tokenizer_name_or_path", str(merged_dir),
            "--train_file_dir", str(text.parent), "--block_size", "32", "--output_dir", str(out),
            "--train_new_token_rows", "True", "--max_steps", "12", "--learning_rate", "5e-2",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--disable_tqdm", "True", "--validation_split_percentage", "0",
        ]
    )  # fmt: skip
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora" not in n]
    assert trainable and all("trainable_tokens" in n for n in trainable)  # not the whole embedding matrix
    assert vocabulary.new_token_ids(AutoTokenizer.from_pretrained(out))  # the record travels with the adapter
    with pytest.raises(UserError, match="pass --resize_emb True"):
        merge_peft_adapter.main(
            ["--base_model", str(tiny_model_dir), "--lora_model", str(out), "--output_dir", str(tmp_path / "no")]
        )
    merged_model = tmp_path / "merged"
    merge_peft_adapter.main(
        [
            "--base_model",
            str(tiny_model_dir),
            "--lora_model",
            str(out),
            "--output_dir",
            str(merged_model),
            "--resize_emb",
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(merged_model)
    assert getattr(model.config, vocabulary.CONFIG_MARK) == len(vocabulary.new_token_ids(trainer.processing_class))
    ids = torch.tensor([trainer.processing_class.encode(CHINESE)])
    with torch.no_grad():
        merged_loss = model(ids, labels=ids).loss
        adapter_loss = trainer.model.eval()(ids.to(trainer.model.device), labels=ids).loss
    torch.testing.assert_close(merged_loss, adapter_loss.cpu(), rtol=1e-4, atol=1e-4)  # merged equals adapter
    reloaded = load_model(
        ModelArguments(model_name_or_path=str(merged_model), device_map="cpu"), None, trainer.processing_class
    )
    torch.testing.assert_close(
        reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight
    )  # no re-init
    chats = tmp_path / "sftdata" / "chat.jsonl"
    chats.parent.mkdir()
    chats.write_text(
        json.dumps(
            {"conversations": [{"from": "human", "value": "血糖?"}, {"from": "gpt", "value": CHINESE}]},
            ensure_ascii=False,
        )
        + "\n"
    )
    results = evaluate_model.main(
        [
            "--base_model",
            str(merged_model),
            "--chat_file",
            str(chats),
            "--template_name",
            "chatml",
            "--output_file",
            str(tmp_path / "eval.json"),
        ]
    )
    assert results["chat"]["perplexity"] > 1
    sft = tmp_path / "sft"
    supervised_finetuning.main(
        [
            "--model_name_or_path", str(merged_model), "--train_file_dir", str(chats.parent),
            "--template_name", "chatml", "--output_dir", str(sft), "--max_steps", "2", "--model_max_length", "128",
            "--per_device_train_batch_size", "1", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "True", "--validation_split_percentage", "0",
        ]
    )  # fmt: skip
    questions = tmp_path / "q.txt"
    questions.write_text("糖尿病患者怎样监测血糖？\n", encoding="utf-8")
    answers = inference.main(
        ["--base_model", str(merged_model), "--lora_model", str(sft), "--data_file", str(questions),
         "--output_file", str(tmp_path / "answers.jsonl"), "--max_new_tokens", "6", "--temperature", "0"]
    )  # fmt: skip
    assert json.loads(answers.read_text().splitlines()[0])["Input"] == "糖尿病患者怎样监测血糖？"
