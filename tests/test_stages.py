"""End to end, in process: PT -> SFT -> merge -> inference on the tiny model, plus learning and error runs."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import inference
import merge_peft_adapter
import pretraining
import supervised_finetuning
from medgpt.chat import get_template
from medgpt.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--per_device_train_batch_size",
    "2",
    "--learning_rate",
    "1e-3",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--disable_tqdm",
    "True",
]


@pytest.fixture(scope="module")
def sft_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "out"
    supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "sft"),
            "--template_name",
            "qwen2.5",
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--do_eval",
            "--validation_split_percentage",
            "20",
            "--model_max_length",
            "256",
            *FAST,
            "--report_to",
            "tensorboard",
        ]
    )
    return out


def test_sft_writes_every_artifact(sft_dir):
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "template_config.json",
        "trainer_state.json",
        "train_results.json",
        "eval_results.json",
        "training_loss.png",
    ):
        assert (sft_dir / name).is_file(), name
    assert list(sft_dir.glob("runs/**/events.out.tfevents.*")), "TensorBoard event files"
    assert json.loads((sft_dir / "template_config.json").read_text())["template_name"] == "qwen2.5"
    saved = AutoTokenizer.from_pretrained(sft_dir)
    assert saved.chat_template == get_template("qwen2.5").to_jinja()
    assert "perplexity" in json.loads((sft_dir / "eval_results.json").read_text())


def test_pretraining_lora_and_full(tiny_model_dir, tmp_path):
    out = tmp_path / "pt"
    trainer = pretraining.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "pretrain"),
            "--block_size",
            "64",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--validation_split_percentage",
            "0",
            *FAST,
        ]
    )
    assert (out / "adapter_model.safetensors").is_file() and not (out / "template_config.json").exists()
    assert "position_ids" in trainer.train_dataset.column_names  # packed by default
    full = tmp_path / "pt-full"
    pretraining.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "pretrain"),
            "--block_size",
            "64",
            "--output_dir",
            str(full),
            "--max_steps",
            "1",
            "--use_peft",
            "False",
            "--packing",
            "False",
            "--validation_split_percentage",
            "0",
            *FAST,
        ]
    )
    assert (full / "model.safetensors").is_file()


def test_sft_learns(tiny_model_dir, tmp_path):
    """A handful of rows, many steps (full fine-tuning): the training loss falls clearly."""
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"Question {i}: what helps a fever?"},
                {"from": "gpt", "value": "Rest, drink water and see a doctor if it lasts."},
            ]
        }
        for i in range(6)
    ]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    trainer = supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(tmp_path / "data"),
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "30",
            "--validation_split_percentage",
            "0",
            "--use_peft",
            "False",
            *FAST,
            "--learning_rate",
            "1e-2",
        ]
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.4 * losses[0], losses
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_packed_sft_trains(tiny_model_dir, tmp_path):
    trainer = supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "sft"),
            "--template_name",
            "chatml",
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--packing",
            "True",
            "--validation_split_percentage",
            "0",
            "--model_max_length",
            "512",
            "--max_train_samples",
            "24",
            *FAST,
        ]
    )
    assert len(trainer.train_dataset) < 24 and "position_ids" in trainer.train_dataset.column_names


def test_merge_equals_adapter_and_refuses_to_overwrite(tiny_model_dir, sft_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    merge_peft_adapter.main(
        ["--base_model", str(tiny_model_dir), "--lora_model", str(sft_dir), "--output_dir", str(out)]
    )
    assert "merge check: max |merged - adapter| logit difference" in capsys.readouterr().out
    assert json.loads((out / "template_config.json").read_text())["template_name"] == "qwen2.5"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), sft_dir).eval()
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapter(ids).logits, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).chat_template == get_template("qwen2.5").to_jinja()
    with pytest.raises(UserError, match="not empty"):
        merge_peft_adapter.main(
            ["--base_model", str(tiny_model_dir), "--lora_model", str(sft_dir), "--output_dir", str(out)]
        )
    merge_peft_adapter.main(
        [
            "--base_model",
            str(tiny_model_dir),
            "--lora_model",
            str(sft_dir),
            "--output_dir",
            str(out),
            "--overwrite",
            "True",
            "--dtype",
            "bfloat16",
        ]
    )
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_merge_fails_loudly_on_the_wrong_base(tiny_model_dir, sft_dir, tmp_path):
    other = tmp_path / "other-base"
    from tiny_model import build_tiny_model

    build_tiny_model(other, seed=1)
    with pytest.raises(RuntimeError, match="differs from the adapter model"):
        # A base with other weights: the adapter applies, but the check must still pass; with a corrupted
        # adapter it must fail. Corrupt the adapter so merged != adapter is impossible to hide.
        bad = tmp_path / "bad-adapter"
        shutil.copytree(sft_dir, bad)
        from safetensors.torch import load_file, save_file

        weights = load_file(bad / "adapter_model.safetensors")
        save_file({k: v * float("nan") for k, v in weights.items()}, bad / "adapter_model.safetensors")
        merge_peft_adapter.main(
            ["--base_model", str(other), "--lora_model", str(bad), "--output_dir", str(tmp_path / "merged")]
        )
    assert not (tmp_path / "merged").exists(), "nothing half-written"


def test_inference_batch_with_adapter(tiny_model_dir, sft_dir, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("What helps a fever?\n发烧怎么办？\n\nIs 140/90 high?\n")
    out = inference.main(
        [
            "--base_model",
            str(tiny_model_dir),
            "--lora_model",
            str(sft_dir),
            "--data_file",
            str(questions),
            "--output_file",
            str(tmp_path / "answers.jsonl"),
            "--max_new_tokens",
            "8",
            "--temperature",
            "0",
            "--eval_batch_size",
            "2",
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["Input"] for r in rows] == ["What helps a fever?", "发烧怎么办？", "Is 140/90 high?"]
    assert all(isinstance(r["Output"], str) for r in rows)


def test_inference_is_reproducible_with_a_seed(tiny_model_dir, tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({"instruction": "Fever?"}) + "\n")
    outputs = []
    for run in range(2):
        out = inference.main(
            [
                "--base_model",
                str(tiny_model_dir),
                "--data_file",
                str(tmp_path / "q.jsonl"),
                "--output_file",
                str(tmp_path / f"a{run}.jsonl"),
                "--max_new_tokens",
                "12",
                "--temperature",
                "1.0",
                "--seed",
                "7",
                "--template_name",
                "chatml",
            ]
        )
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]


def test_interactive_chat_keeps_correct_history(tiny_model_dir, sft_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\nsecond question\nclear\nthird\nexit\n"))
    prompts = []
    from medgpt.engine import ChatEngine

    original = ChatEngine.stream

    def spy(engine, messages, *args, **kwargs):
        prompts.append(messages)
        return original(engine, messages, *args, **kwargs)

    monkeypatch.setattr(ChatEngine, "stream", spy)
    history = inference.main(
        [
            "--base_model",
            str(tiny_model_dir),
            "--lora_model",
            str(sft_dir),
            "--interactive",
            "--max_new_tokens",
            "5",
            "--temperature",
            "0",
            "--system_prompt",
            "Be brief.",
        ]
    )
    assert [m["content"] for m in prompts[1][:3]] == ["Be brief.", "first question", prompts[1][2]["content"]]
    assert prompts[1][3] == {"role": "user", "content": "second question"}
    assert [m["content"] for m in prompts[2]] == ["Be brief.", "third"], "clear forgets the conversation"
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert "Assistant:" in capsys.readouterr().out


def test_bad_data_leaves_no_output(tiny_model_dir, tmp_path):
    write_jsonl(
        tmp_path / "data" / "train.jsonl",
        [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "{not json"],
    )
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"train\.jsonl:2: .*invalid JSON"):
        supervised_finetuning.main(
            [
                "--model_name_or_path",
                str(tiny_model_dir),
                "--train_file_dir",
                str(tmp_path / "data"),
                "--output_dir",
                str(out),
                "--template_name",
                "chatml",
            ]
        )
    assert not out.exists()


def test_cli_error_is_one_paragraph_and_exit_code_2(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"conversations": [{"from": "nurse", "value": "q"}]}])
    result = subprocess.run(
        [
            sys.executable,
            "supervised_finetuning.py",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(tmp_path / "data"),
            "--output_dir",
            str(tmp_path / "out"),
            "--template_name",
            "chatml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train.jsonl:1: field 'conversations[0].from': unknown role 'nurse'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_medicalgpt_sft_command_line(tiny_model_dir, reference_data, tmp_path):
    """MedicalGPT's run_sft.sh flags (minus the dead --flash_attn) on its own sample data: trains, merges, chats."""
    out = tmp_path / "outputs-sft-qwen-v1"
    trainer = supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(reference_data / "sft"),
            "--validation_file_dir",
            str(reference_data / "sft"),
            "--per_device_train_batch_size",
            "2",
            "--per_device_eval_batch_size",
            "1",
            "--do_train",
            "--do_eval",
            "--use_peft",
            "True",
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "4",
            "--model_max_length",
            "256",
            "--num_train_epochs",
            "1",
            "--learning_rate",
            "2e-5",
            "--warmup_steps",
            "5",
            "--weight_decay",
            "0.05",
            "--logging_strategy",
            "steps",
            "--logging_steps",
            "10",
            "--eval_steps",
            "50",
            "--eval_strategy",
            "steps",
            "--save_steps",
            "500",
            "--save_strategy",
            "steps",
            "--save_total_limit",
            "13",
            "--gradient_accumulation_steps",
            "2",
            "--preprocessing_num_workers",
            "1",
            "--output_dir",
            str(out),
            "--ddp_timeout",
            "30000",
            "--logging_first_step",
            "True",
            "--target_modules",
            "all",
            "--lora_rank",
            "8",
            "--lora_alpha",
            "16",
            "--lora_dropout",
            "0.05",
            "--torch_dtype",
            "bfloat16",
            "--bf16",
            "--report_to",
            "tensorboard",
            "--ddp_find_unused_parameters",
            "False",
            "--gradient_checkpointing",
            "True",
            "--tool_format",
            "default",
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )
    assert (out / "adapter_model.safetensors").is_file()
    state = json.loads((out / "trainer_state.json").read_text())

    # Packing is the default: rows hold several samples; a sample starts where its position ids restart at 0.
    def samples(dataset) -> int:
        return sum(positions.count(0) for positions in dataset["position_ids"])

    assert samples(trainer.eval_dataset) == 4, "--max_eval_samples"
    assert 12 <= samples(trainer.train_dataset) <= 16, "--max_train_samples, less samples whose prompt is too long"
    rows_per_step = 2 * 2  # batch 2, accumulation 2
    assert state["global_step"] == -(-len(trainer.train_dataset) // rows_per_step)
    merged = tmp_path / "merged-sft"
    merge_peft_adapter.main(
        ["--base_model", str(tiny_model_dir), "--lora_model", str(out), "--output_dir", str(merged)]
    )
    (tmp_path / "q.txt").write_text("治疗感冒吃什么药？\n")
    answers = inference.main(
        [
            "--base_model",
            str(merged),
            "--data_file",
            str(tmp_path / "q.txt"),
            "--output_file",
            str(tmp_path / "a.jsonl"),
            "--max_new_tokens",
            "4",
        ]
    )
    assert answers.is_file()


def test_neft_alpha_changes_training(tiny_model_dir, tmp_path):
    losses = {}
    for alpha in ("0", "50"):
        trainer = supervised_finetuning.main(
            [
                "--model_name_or_path",
                str(tiny_model_dir),
                "--train_file_dir",
                str(ROOT / "data" / "sft"),
                "--template_name",
                "chatml",
                "--output_dir",
                str(tmp_path / alpha),
                "--max_steps",
                "2",
                "--validation_split_percentage",
                "0",
                "--neft_alpha",
                alpha,
                *FAST,
            ]
        )
        losses[alpha] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses["0"][0] != losses["50"][0], "noisy embeddings change the training loss"


def test_peft_path_continues_a_saved_adapter(tiny_model_dir, sft_dir, tmp_path):
    from safetensors.torch import load_file

    trainer = supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "sft"),
            "--template_name",
            "qwen2.5",
            "--output_dir",
            str(tmp_path / "more"),
            "--max_steps",
            "1",
            "--validation_split_percentage",
            "0",
            "--peft_path",
            str(sft_dir),
            *FAST,
        ]
    )
    before = load_file(sft_dir / "adapter_model.safetensors")
    after = load_file(tmp_path / "more" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the loaded adapter kept training"
    assert trainer.model.peft_config["default"].r == 8


@pytest.mark.slow
def test_two_process_torchrun_sft(tiny_model_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "supervised_finetuning.py",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "sft"),
            "--template_name",
            "chatml",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--validation_split_percentage",
            "0",
            "--ddp_backend",
            "gloo",
            "--ddp_find_unused_parameters",
            "False",
            *FAST,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("trainable parameters") == 2, "both ranks built the model"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (out / "adapter_model.safetensors").is_file()


def test_merge_reward_model_adapter(tiny_model_dir, tmp_path):
    """A sequence-classification (reward) adapter merges into a standalone scorer with equal scores."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = 0
    reward = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type=TaskType.SEQ_CLS))
    for name, param in reward.named_parameters():
        if "lora_B" in name or "score" in name:
            torch.nn.init.normal_(param, std=0.5)  # a trained-looking adapter and head
    reward.save_pretrained(tmp_path / "rm-adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm-adapter")
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    with torch.no_grad():
        expected = reward.eval()(ids).logits
    out = merge_peft_adapter.main(
        [
            "--base_model",
            str(tiny_model_dir),
            "--lora_model",
            str(tmp_path / "rm-adapter"),
            "--output_dir",
            str(tmp_path / "rm-merged"),
        ]
    )
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, expected, atol=1e-5)


def test_every_row_too_long_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="no training row fits --model_max_length 40"):
        supervised_finetuning.main(
            [
                "--model_name_or_path",
                str(tiny_model_dir),
                "--train_file_dir",
                str(ROOT / "data" / "sft"),
                "--template_name",
                "qwen2.5",
                "--output_dir",
                str(tmp_path / "out"),
                "--model_max_length",
                "40",
                "--validation_split_percentage",
                "0",
                *FAST,
            ]
        )
    assert not (tmp_path / "out").exists()


def test_inference_batch_reads_every_row_shape(tiny_model_dir, tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Own system."}, {"role": "user", "content": "Q1"}]},
        {
            "conversations": [
                {"from": "human", "value": "Weather?"},
                {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny."},
                {"from": "human", "value": "Q2"},
            ]
        },
        {"instruction": "Translate", "input": "发烧"},
        {"question": "Q4"},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    import template as template_module

    seen = []
    original = template_module.Template.render

    def spy(self, messages, tools=None, add_generation_prompt=False):
        seen.append(messages)
        return original(self, messages, tools, add_generation_prompt)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(template_module.Template, "render", spy)
        out = inference.main(
            [
                "--base_model",
                str(tiny_model_dir),
                "--template_name",
                "chatml",
                "--data_file",
                str(tmp_path / "in.jsonl"),
                "--output_file",
                str(tmp_path / "out.jsonl"),
                "--system_prompt",
                "Global system.",
                "--max_new_tokens",
                "3",
                "--stop_str",
                "e",
            ]
        )
    assert seen[0][0] == {"role": "system", "content": "Own system."}, "a row's own system prompt wins"
    assert seen[1][0]["content"] == "Global system." and seen[1][-1]["content"] == "Q2"
    assert seen[1][2]["tool_calls"][0]["function"]["name"] == "w"
    assert seen[2][-1]["content"] == "Translate\n发烧", "alpaca input joins the instruction, as in training"
    answers = [json.loads(line)["Output"] for line in out.read_text().splitlines()]
    assert len(answers) == 4 and not any("e" in a for a in answers), "--stop_str cuts the answer"


def test_block_size_zero_means_the_tokenizer_length(tiny_model_dir, tmp_path):
    trainer = pretraining.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--train_file_dir",
            str(ROOT / "data" / "pretrain"),
            "--block_size",
            "0",
            "--packing",
            "False",
            "--output_dir",
            str(tmp_path / "pt"),
            "--max_steps",
            "1",
            "--validation_split_percentage",
            "0",
            *FAST,
        ]
    )
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= 1024


def test_eval_only_run_logs_into_output_dir(tiny_model_dir, sft_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eval-only"
    supervised_finetuning.main(
        [
            "--model_name_or_path",
            str(tiny_model_dir),
            "--validation_file_dir",
            str(ROOT / "data" / "sft"),
            "--template_name",
            "chatml",
            "--output_dir",
            str(out),
            "--do_train",
            "False",
            "--do_eval",
            "--peft_path",
            str(sft_dir),
            "--report_to",
            "tensorboard",
            "--disable_tqdm",
            "True",
        ]
    )
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] > 0
    assert list(out.glob("runs/**/events.out.tfevents.*")) and not (tmp_path / "runs").exists()


def test_inference_needs_resize_emb_for_a_grown_vocabulary(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["高血压"])
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "q.txt").write_text("高血压?\n")
    flags = [
        "--base_model",
        str(tiny_model_dir),
        "--tokenizer_path",
        str(tmp_path / "tok"),
        "--template_name",
        "chatml",
        "--data_file",
        str(tmp_path / "q.txt"),
        "--output_file",
        str(tmp_path / "a.jsonl"),
        "--max_new_tokens",
        "2",
    ]
    with pytest.raises(UserError, match="pass --resize_emb True"):
        inference.main(flags)
    assert inference.main([*flags, "--resize_emb", "True"]).is_file()
