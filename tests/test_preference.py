"""Preference stages: pair formats, rendering and truncation, reward model / DPO / ORPO learning, cached reference."""

import json
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

import dpo_training
import merge_peft_adapter
import orpo_training
import reward_modeling
from medgpt.args import DataArguments, PreferenceArguments
from medgpt.chat import get_template, split_answer
from medgpt.data import load_datasets
from medgpt.errors import UserError
from medgpt.formats import ReadReport, RowError, normalize_preference
from medgpt.preference import encode_pair, score

GOOD_ANSWER = "Rest, drink water and see a doctor if it lasts."
BAD_ANSWER = "Buy antibiotics online now!!!"
QUESTIONS = [
    "I have a fever.",
    "My child has a cough.",
    "发烧三天了怎么办？",
    "I feel dizzy.",
    "My throat hurts.",
    "I have a headache.",
    "肚子疼怎么办？",
    "I cannot sleep.",
    "My back hurts.",
    "I sneeze a lot.",
    "I feel tired.",
    "My knee is swollen.",
    "头晕是怎么回事？",
    "I have a rash.",
    "My ear hurts.",
    "I feel sick after eating.",
    "I have chest tightness.",
    "My eyes are red.",
    "I have a runny nose.",
    "My stomach is upset.",
    "咳嗽一周了。",
    "I twisted my ankle.",
    "I have a toothache.",
    "I feel anxious.",
]
FAST = [
    "--per_device_train_batch_size",
    "4",
    "--logging_steps",
    "5",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--disable_tqdm",
    "True",
    "--max_length",
    "128",
    "--max_source_length",
    "64",
    "--max_target_length",
    "32",
]


def pair_rows(questions: list[str]) -> list[dict]:
    """Chosen answers share one clear pattern, rejected answers another."""
    return [
        {"conversations": [{"from": "human", "value": q}], "chosen": GOOD_ANSWER, "rejected": BAD_ANSWER}
        for q in questions
    ]


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    write_jsonl(root / "train" / "pairs.jsonl", pair_rows(QUESTIONS[:16]))
    write_jsonl(root / "eval" / "pairs.jsonl", pair_rows(QUESTIONS[16:]))
    return root / "train", root / "eval"


def normalized(row: dict) -> dict:
    return {
        key: json.loads(value) if value else value for key, value in normalize_preference(row, ReadReport()).items()
    }


# ---------------------------------------------------------------- formats


def test_medicalgpt_pairs_with_system_and_tool_turns():
    row = normalized(
        {
            "conversations": [
                {"from": "system", "value": "Be careful."},
                {"from": "human", "value": "Weather?"},
                {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
                {"from": "observation", "value": "sunny"},
            ],
            "tools": '[{"name": "w"}]',
            "chosen": "Sunny.",
            "rejected": "Rain.",
        }
    )
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "tool"]
    assert row["chosen"] == {"role": "assistant", "content": "Sunny."} and row["tools"] == [{"name": "w"}]


def test_legacy_and_trl_pairs():
    legacy = normalized(
        {
            "system": "S",
            "history": [["q0", "a0"]],
            "question": "q1",
            "response_chosen": "good",
            "response_rejected": "bad",
        }
    )
    assert [m["content"] for m in legacy["prompt"]] == ["S", "q0", "a0", "q1"]
    trl_text = normalized({"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert trl_text["prompt"] == [{"role": "user", "content": "q"}]
    trl_messages = normalized(
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
    )
    assert trl_messages["rejected"]["content"] == "bad"
    implicit = normalized(
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
        }
    )
    assert implicit["prompt"] == [{"role": "user", "content": "q"}] and implicit["chosen"]["content"] == "good"


@pytest.mark.parametrize(
    "row, text",
    [
        ({"prompt": "q", "chosen": "  ", "rejected": "bad"}, "field 'chosen': is empty"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
        ({"conversations": [{"from": "human", "value": "q"}], "chosen": "a"}, "field 'rejected': missing"),
        (
            {
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                "chosen": "x",
                "rejected": "y",
            },
            "must end with a user turn",
        ),
        ({"question_text": "q"}, "unknown preference format"),
    ],
)
def test_bad_pairs_are_rejected(row, text):
    with pytest.raises(RowError, match=text):
        normalize_preference(row, ReadReport())


def test_bad_pair_file_names_file_and_line_or_is_skipped(tmp_path):
    good = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    path = write_jsonl(tmp_path / "d" / "p.jsonl", [good, {"prompt": "q", "chosen": "x", "rejected": "x"}, good, good])
    with pytest.raises(UserError, match=rf"{path}:2: field 'rejected': is identical"):
        load_datasets(DataArguments(train_file_dir=str(tmp_path / "d")), "preference")
    splits = load_datasets(
        DataArguments(train_file_dir=str(tmp_path / "d"), skip_bad_rows=True, validation_split_percentage=0),
        "preference",
    )
    assert len(splits["train"]) == 3


# ---------------------------------------------------------------- rendering and truncation


def pair(prompt_text: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": json.dumps([{"role": "user", "content": prompt_text}]),
        "chosen": json.dumps({"role": "assistant", "content": chosen}),
        "rejected": json.dumps({"role": "assistant", "content": rejected}),
        "tools": "",
    }


def test_pair_is_rendered_like_sft(tiny_model_dir):
    template = get_template("qwen2.5")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = encode_pair(tokenizer, template, pair("Fever?", "Rest.", "Nothing."), 512, PreferenceArguments())
    conversation = [{"role": "user", "content": "Fever?"}, {"role": "assistant", "content": "Rest."}]
    assert template.render(conversation).startswith(out["prompt"] + out["chosen"])
    assert out["chosen"] == "Rest.<|im_end|>" and out["rejected"] == "Nothing.<|im_end|>"
    assert out["chosen_ids"] == tokenizer(out["prompt"] + out["chosen"], add_special_tokens=False)["input_ids"]


def test_long_pairs_cut_the_prompt_first_and_keep_stop_tokens(tiny_model_dir):
    template = get_template("chatml")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_pair = pair("fever and cough " * 40, "Rest and water. " * 30, "No.")
    out = encode_pair(
        tokenizer, template, long_pair, 64, PreferenceArguments(max_source_length=40, max_target_length=20)
    )
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(out["chosen_ids"]) <= 64 and len(out["rejected_ids"]) <= 64
    assert out["chosen_ids"][-1] == stop and out["rejected_ids"][-1] == stop
    assert out["chosen"].endswith("<|im_end|>") and len(tokenizer(out["chosen"])["input_ids"]) == 20
    assert out["prompt"].endswith("<|im_start|>assistant\n"), "the newest prompt tokens are kept"
    prompt_ids = tokenizer(out["prompt"], add_special_tokens=False)["input_ids"]
    assert len(prompt_ids) == 40 and out["chosen_ids"][:40] == prompt_ids


def test_prompt_cut_keeps_one_bos(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    )
    template = get_template("llama3")
    out = encode_pair(tokenizer, template, pair("fever " * 60, "Rest.", "No."), 48, PreferenceArguments())
    assert out["prompt"].startswith("<|begin_of_text|>") and out["prompt"].count("<|begin_of_text|>") == 1
    assert out["chosen_ids"][0] == tokenizer.bos_token_id and out["chosen_ids"][1] != tokenizer.bos_token_id


def test_qwen3_prompt_ends_with_the_think_block():
    template = get_template("qwen3")
    prompt, answer = split_answer(
        template, [{"role": "user", "content": "Q"}], {"role": "assistant", "content": "A"}, None
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and answer == "A<|im_end|>"


# ---------------------------------------------------------------- stages


def answer_logprob(model, tokenizer, template, question: str, answer: str) -> float:
    prompt, text = split_answer(
        template, [{"role": "user", "content": question}], {"role": "assistant", "content": answer}, None
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = tokenizer(prompt + text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(full).logits[0, :-1].float(), dim=-1)
    targets = full[0, 1:]
    picked = logprobs[torch.arange(len(targets)), targets]
    return picked[prompt_ids.shape[1] - 1 :].sum().item()


def held_out_margin(model, tokenizer) -> float:
    template = get_template("chatml")
    return (
        sum(
            answer_logprob(model, tokenizer, template, q, GOOD_ANSWER)
            - answer_logprob(model, tokenizer, template, q, BAD_ANSWER)
            for q in QUESTIONS[16:]
        )
        / 8
    )


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, pair_dirs, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("rm") / "out"
    trainer = reward_modeling.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(pair_dirs[0]),
            "--validation_file_dir",
            str(pair_dirs[1]),
            "--do_eval",
            "--template_name",
            "chatml",
            "--output_dir",
            str(out),
            "--max_steps",
            "40",
            "--learning_rate",
            "5e-3",
            "--lora_rank",
            "16",
            "--lora_dropout",
            "0",
            "--activation_checkpointing",
            "False",
            *FAST,
        ]
    )
    return out, trainer


def test_reward_model_learns_the_preference(rm_dir):
    out, trainer = rm_dir
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_accuracy"] >= 0.9, metrics  # 8 held-out pairs; chance is 0.5
    assert metrics["eval_margin"] > 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "template_config.json").is_file()


def test_merged_reward_model_scores_like_the_adapter(tiny_model_dir, rm_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    adapter_dir, _ = rm_dir
    merged = merge_peft_adapter.main(
        [
            "--base_model",
            str(tiny_model_dir),
            "--lora_model",
            str(adapter_dir),
            "--output_dir",
            str(tmp_path / "merged-rm"),
        ]
    )
    scores = score(merged, QUESTIONS[20], [GOOD_ANSWER, BAD_ANSWER])
    assert scores[0] > scores[1]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_model_dir).pad_token_id
    adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    template = get_template("chatml")
    for answer, merged_score in zip([GOOD_ANSWER, BAD_ANSWER], scores, strict=True):
        prompt, text = split_answer(
            template, [{"role": "user", "content": QUESTIONS[20]}], {"role": "assistant", "content": answer}, None
        )
        with torch.no_grad():
            adapter_score = adapter(**tokenizer(prompt + text, return_tensors="pt")).logits[0, 0].item()
        assert abs(adapter_score - merged_score) < 1e-4


@pytest.mark.parametrize("stage", [dpo_training, orpo_training])
def test_dpo_and_orpo_raise_the_held_out_margin(stage, tiny_model_dir, pair_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = held_out_margin(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tokenizer)
    trainer = stage.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(pair_dirs[0]),
            "--validation_split_percentage",
            "0",
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "30",
            "--learning_rate",
            "1e-2",
            "--lora_rank",
            "16",
            "--lora_dropout",
            "0",
            "--activation_checkpointing",
            "False",
            *FAST,
        ]
    )
    after = held_out_margin(trainer.model.eval(), tokenizer)
    assert after > before + 1.0, (before, after)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_cached_reference_log_probs_skip_the_reference_forward(
    tiny_model_dir, pair_dirs, tmp_path, monkeypatch, caplog
):
    calls = []
    original = dpo_training.DPOTrainer.compute_ref_log_probs

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(dpo_training.DPOTrainer, "compute_ref_log_probs", counting)
    run = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--train_file_dir",
        str(pair_dirs[0]),
        "--validation_split_percentage",
        "0",
        "--template_name",
        "chatml",
        "--max_steps",
        "1",
        "--precompute_ref_log_probs",
        "True",
        "--cache_dir",
        str(tmp_path / "cache"),
        *FAST,
    ]
    with caplog.at_level("INFO"):
        dpo_training.main([*run, "--output_dir", str(tmp_path / "first")])
    assert calls and "reference log-probs computed and cached" in caplog.text
    calls.clear()
    caplog.clear()
    with caplog.at_level("INFO"):
        trainer = dpo_training.main([*run, "--output_dir", str(tmp_path / "second")])
    assert calls == [], "no reference forward on the second run"
    assert "reference log-probs reused from the cache" in caplog.text
    assert "ref_chosen_logps" in trainer.train_dataset.column_names


def test_dpo_tokenized_pairs_have_one_bos(tiny_model_dir, pair_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tokenizer))
    tokenizer.save_pretrained(tmp_path / "llama-like")
    model.save_pretrained(tmp_path / "llama-like")
    trainer = dpo_training.main(
        [
            "--model_name_or_path",
            str(tmp_path / "llama-like"),
            "--train_file_dir",
            str(pair_dirs[0]),
            "--validation_split_percentage",
            "0",
            "--template_name",
            "llama3",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "1",
            *FAST,
        ]
    )
    bos = trainer.processing_class.bos_token_id
    for row in trainer.train_dataset:
        assert row["prompt_ids"][0] == bos and row["prompt_ids"][1] != bos
        eot = trainer.processing_class.convert_tokens_to_ids("<|eot_id|>")
        assert row["chosen_ids"][-1] == eot and row["chosen_ids"][-2] != eot, "one stop token, no extra eos"


@pytest.mark.parametrize("stage", [dpo_training, reward_modeling, orpo_training])
def test_medicalgpt_preference_files_train(stage, tiny_model_dir, reference_data, tmp_path):
    trainer = stage.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(reference_data / "reward"),
            "--max_train_samples",
            "24",
            "--validation_split_percentage",
            "5",
            "--do_eval",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--use_peft",
            "True",
            "--target_modules",
            "all",
            "--lora_rank",
            "8",
            "--lora_alpha",
            "16",
            "--tool_format",
            "default",
            *FAST,
            "--max_length",
            "512",
            "--max_source_length",
            "384",
            "--max_target_length",
            "128",
        ]
    )
    assert trainer.state.global_step == 2


def test_every_trl_option_is_reachable(tiny_model_dir, pair_dirs, tmp_path):
    trainer = dpo_training.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(pair_dirs[0]),
            "--validation_split_percentage",
            "0",
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "1",
            "--beta",
            "0.3",
            "--loss_type",
            "ipo",
            "--seed",
            "7",
            "--save_total_limit",
            "2",
            *FAST,
        ]
    )
    assert (trainer.args.beta, trainer.args.loss_type, trainer.args.seed) == (0.3, ["ipo"], 7)
    assert trainer.state.global_step == 1


def test_medicalgpt_tool_call_pairs_train(tiny_model_dir, reference_data, tmp_path):
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "pairs.jsonl").write_text(
        (reference_data / "reward" / "toolcall_dpo_zh_demo.jsonl").read_text()
    )
    trainer = dpo_training.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(tmp_path / "tool"),
            "--validation_split_percentage",
            "0",
            "--template_name",
            "qwen2.5",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            *FAST,
            "--max_length",
            "1024",
            "--max_source_length",
            "896",
            "--max_target_length",
            "128",
        ]
    )
    assert len(trainer.train_dataset) == 11 and trainer.state.global_step == 2
    assert any("<tool_response>" in text for text in trainer.train_dataset["prompt"]), "tool results in prompts"


def test_dpo_with_lora_keeps_no_reference_copy(tiny_model_dir, pair_dirs, tmp_path):
    trainer = dpo_training.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(pair_dirs[0]),
            "--validation_split_percentage",
            "0",
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "1",
            *FAST,
        ]
    )
    assert trainer.ref_model is None, "the reference is the same model with its adapter switched off"
    # A new adapter is zero, so the base (adapter off) is the reference: no frozen copy of the adapter is kept.
    assert list(trainer.model.peft_config) == ["default"]
    assert not any(".ref." in name for name, _ in trainer.model.named_parameters())

    # An adapter trained before (--peft_path) is the reference itself: TRL's frozen copy of it stays.
    again = dpo_training.main(
        [
            *["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(pair_dirs[0])],
            *["--validation_split_percentage", "0", "--template_name", "chatml", "--max_steps", "1", *FAST],
            *["--peft_path", str(tmp_path / "out"), "--output_dir", str(tmp_path / "again")],
        ]
    )
    assert sorted(again.model.peft_config) == ["default", "ref"]


def test_reward_model_batches_work_without_a_native_pad_token(pair_dirs, tmp_path):
    from tiny_model import build_tiny_model

    llama = build_tiny_model(tmp_path / "llama", architecture="llama", pad=False)
    trainer = reward_modeling.main(
        [
            "--model_name_or_path",
            str(llama),
            "--train_file_dir",
            str(pair_dirs[0]),
            "--validation_split_percentage",
            "0",
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            *FAST,
        ]
    )
    assert trainer.model.config.pad_token_id == trainer.processing_class.pad_token_id is not None
    assert trainer.state.global_step == 2  # batches of 4 pairs of different lengths


def test_an_empty_eval_split_is_skipped_not_crashed(tiny_model_dir, pair_dirs, tmp_path):
    write_jsonl(
        tmp_path / "eval" / "long.jsonl",
        [{"prompt": "q", "chosen": "long answer " * 200, "rejected": "other long answer " * 200}],
    )
    trainer = reward_modeling.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(pair_dirs[0]),
            "--validation_file_dir",
            str(tmp_path / "eval"),
            "--do_eval",
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "1",
            *FAST,
            "--max_length",
            "40",
            "--max_target_length",
            "60",
        ]
    )
    assert trainer.eval_dataset is None and trainer.state.global_step == 1


@pytest.mark.parametrize(
    "row, text",
    [
        ({"question": "q", "response_chosen": "a"}, "field 'response_rejected': missing"),
        ({"chosen": "good", "rejected": "bad"}, "field 'prompt': missing"),
        ({"prompt": "q", "chosen": "good"}, "field 'rejected': missing"),
        (
            {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
            "shares no prompt turns",
        ),
    ],
)
def test_pair_errors_name_the_missing_field(row, text):
    with pytest.raises(RowError, match=text):
        normalize_preference(row, ReadReport())


def test_a_bos_that_opens_every_turn_is_cut_like_text(tiny_model_dir):
    """SmolLM2 declares <|im_start|> as its BOS; keeping it alone would leave a turn opener without a role."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.bos_token = "<|im_start|>"
    out = encode_pair(
        tokenizer, get_template("chatml"), pair("fever " * 60, "Rest.", "No."), 48, PreferenceArguments()
    )
    assert not out["prompt"].startswith("<|im_start|>fever")
    assert out["prompt"].endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("stage", [dpo_training, reward_modeling, orpo_training])
def test_evaluation_only_runs(stage, tiny_model_dir, pair_dirs, tmp_path):
    trainer = stage.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--validation_file_dir",
            str(pair_dirs[1]),
            "--do_train",
            "False",
            "--do_eval",
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            *FAST,
        ]
    )
    assert trainer.state.global_step == 0
    assert "eval_loss" in json.loads((tmp_path / "out" / "eval_results.json").read_text())


def test_orpo_keeps_stop_tokens_on_pairs_at_the_length_limit(tiny_model_dir, tmp_path):
    write_jsonl(
        tmp_path / "d" / "long.jsonl",
        [{"prompt": "fever " * 80, "chosen": "rest and water " * 40, "rejected": "nothing at all " * 40}] * 4,
    )
    trainer = orpo_training.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(tmp_path / "d"),
            "--validation_split_percentage",
            "0",
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "1",
            *FAST,
            "--max_length",
            "64",
            "--max_source_length",
            "48",
            "--max_target_length",
            "24",
        ]
    )
    stop = trainer.processing_class.convert_tokens_to_ids("<|im_end|>")
    for row in trainer.train_dataset:
        assert len(row["chosen_input_ids"]) <= 64 and row["chosen_input_ids"][-1] == stop
        assert row["rejected_input_ids"][-1] == stop
