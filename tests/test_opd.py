"""opd_training.py: a student learns a confident teacher (held-out divergence and perplexity on the teacher's answers
fall); --opd_lambda 0 trains on the dataset's answers only, 1 on the student's own samples only; the GKD divergence
means what --opd_beta says on hand-computed distributions; runs under torchrun and DeepSpeed and resumes after
kill -9 where an uninterrupted run ends; bad input is named and nothing is written."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_adapter, free_port, start_paused, write_jsonl
from tiny_model import build_tiny_model, build_tokenizer
from transformers import AutoModelForCausalLM

import opd_training
from medgpt.distill import OnPolicyDistillTrainer, last_answer_start
from medgpt.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A confident teacher (a tiny model whose logits are scaled up) and a student that starts elsewhere."""
    root = tmp_path_factory.mktemp("opd")
    teacher = build_tiny_model(root / "teacher", seed=0)
    lm = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        lm.model.norm.weight.mul_(30.0)  # sharper next-token distributions: something definite to learn
    lm.save_pretrained(teacher)
    return {"teacher": teacher, "student": build_tiny_model(root / "student", seed=1)}


def opd_argv(models: dict, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(models["student"]), "--teacher_model_name_or_path", str(models["teacher"]),
        "--train_file_dir", str(ROOT / "data/sft"), "--template_name", "qwen", "--output_dir", str(out),
        "--max_steps", "4", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
        "--max_new_tokens", "8", "--max_length", "256", "--max_prompt_length", "200", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--validation_split_percentage", "0",
        "--learning_rate", "2e-2", "--bf16", "False", "--gradient_checkpointing", "False", "--disable_tqdm", "True",
        *extra,
    ]  # fmt: skip


def test_the_student_learns_the_teacher(models, tmp_path):
    held_out = ["--validation_file_dir", str(ROOT / "data/eval/sft"), "--max_eval_samples", "8"]
    trainer = opd_training.main(
        opd_argv(models, tmp_path / "out", "--max_steps", "30", "--opd_lambda", "0.5", "--opd_beta", "0.5")
        + held_out
        + ["--eval_strategy", "steps", "--eval_steps", "30", "--eval_on_start", "True", "--use_peft", "False"]
    )
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    ppl = [entry for entry in trainer.state.log_history if "eval_teacher_answer_perplexity" in entry]
    assert len(evals) >= 2 and len(ppl) >= 2
    assert evals[-1]["eval_loss"] < 0.7 * evals[0]["eval_loss"], evals
    assert ppl[-1]["eval_teacher_answer_perplexity"] < 0.5 * ppl[0]["eval_teacher_answer_perplexity"], ppl
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "training_loss.png").is_file()


@pytest.mark.parametrize(("share", "on_policy_steps"), [("0", 0), ("1", 4)])
def test_lambda_chooses_between_dataset_answers_and_own_samples(models, tmp_path, monkeypatch, share, on_policy_steps):
    sampled = []
    original = OnPolicyDistillTrainer.generate_on_policy_outputs

    def counting(self, model, inputs, generation_config):
        sampled.append(inputs["prompts"].shape)
        ids, mask, labels = original(self, model, inputs, generation_config)
        prompt = inputs["prompts"].shape[1]
        assert (labels[:, :prompt] == -100).all(), "only the sampled answer is distilled"
        assert generation_config.do_sample and generation_config.top_k == 0 and generation_config.top_p == 1.0
        return ids, mask, labels

    monkeypatch.setattr(OnPolicyDistillTrainer, "generate_on_policy_outputs", counting)
    opd_training.main(opd_argv(models, tmp_path / "out", "--opd_lambda", share))
    assert len(sampled) == on_policy_steps


def test_answer_tokens_only_and_the_prompt_before_the_last_answer():
    labels = [-100, -100, 5, 6, -100, -100, 8, 9, -100]
    assert last_answer_start(labels) == 6
    assert last_answer_start([-100, -100]) == 0


def test_the_divergence_means_what_beta_says():
    """Hand-computed on two tokens of a two-word vocabulary: teacher p = (0.8, 0.2), student q = (0.5, 0.5)."""
    loss = OnPolicyDistillTrainer.generalized_jsd_loss
    teacher = torch.log(torch.tensor([[[0.8, 0.2], [0.8, 0.2]]]))
    student = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    labels = torch.tensor([[1, -100]])  # the second position is not an answer token
    forward = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    reverse = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    mixture = (0.65, 0.35)  # (1 - beta) q + beta p at beta 0.5
    jsd = 0.5 * sum(p * math.log(p / m) for p, m in zip((0.8, 0.2), mixture, strict=True)) + 0.5 * sum(
        q * math.log(q / m) for q, m in zip((0.5, 0.5), mixture, strict=True)
    )
    for beta, expected in ((0.0, forward), (1.0, reverse), (0.5, jsd)):
        assert float(loss(student, teacher, labels, beta=beta)) == pytest.approx(expected, rel=1e-5)


def test_a_teacher_with_another_tokenizer_points_to_offline_distillation(models, tmp_path):
    other = tmp_path / "other"
    build_tiny_model(other)
    build_tokenizer(vocab_size=500).save_pretrained(other)
    argv = opd_argv(models, tmp_path / "out")
    argv[argv.index("--teacher_model_name_or_path") + 1] = str(other)
    with pytest.raises(UserError, match=r"tokenizer differs from the student's.*--output_format sharegpt"):
        opd_training.main(argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--teacher_model_name_or_path": None}, "--teacher_model_name_or_path is required"),
        ({"--teacher_model_name_or_path": "./no/such/teacher"}, r"--teacher_model_name_or_path \./no/such/teacher"),
        ({"--max_prompt_length": "2"}, "no row has a prompt of at most --max_prompt_length 2"),
        ({"--opd_lambda": "1.5"}, "lmbda must be in the range"),
        ({"--per_device_train_batch_size": "0"}, "per_device_train_batch_size"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(models, tmp_path, change, message):
    argv = opd_argv(models, tmp_path / "out")
    for flag, value in change.items():
        if flag in argv:
            index = argv.index(flag)
            argv[index : index + 2] = [] if value is None else [flag, value]
        else:
            argv += [flag, value]
    with pytest.raises(UserError, match=message):
        opd_training.main(argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_opd_under_torchrun_and_deepspeed(models, tmp_path, launcher):
    out = tmp_path / launcher
    port = str(free_port())
    argv = opd_argv(models, out, "--max_steps", "2", "--opd_lambda", "0.5", "--save_strategy", "steps")
    argv += ["--save_steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
        command += ["opd_training.py", *argv, "--ddp_backend", "gloo"]
    else:
        pytest.importorskip("deepspeed")
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        command = [sys.executable, "opd_training.py", *argv, "--deepspeed", "zero2.json"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (out / "checkpoint-2").is_dir()
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_kill_9_then_resume_ends_where_an_uninterrupted_run_ends(models, tmp_path):
    flags = ("--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--opd_lambda", "0.5")
    whole = tmp_path / "whole"
    opd_training.main(opd_argv(models, whole, *flags))
    killed = tmp_path / "killed"
    process = start_paused("opd_training", opd_argv(models, killed, *flags), 4, "after_checkpoint", tmp_path / "log")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert (killed / "checkpoint-4").is_dir() and not (killed / "adapter_config.json").exists()
    trainer = opd_training.main(opd_argv(models, killed, *flags, "--resume_from_checkpoint", "True"))
    assert trainer.state.global_step == 6
    assert_same_adapter(whole, killed)


def test_prompt_rows_with_reference_answers_are_distilled(models, tmp_path):
    argv = opd_argv(models, tmp_path / "out", "--max_steps", "2")
    argv[argv.index("--train_file_dir") + 1] = str(ROOT / "data/grpo")  # question/answer and multiple-choice rows
    trainer = opd_training.main(argv)
    row = trainer.train_dataset[0]
    assert any(label != -100 for label in row["labels"]) and len(row["prompt_ids"]) < len(row["input_ids"])


def test_prompt_rows_without_answers_need_fully_on_policy_runs(models, tmp_path, monkeypatch):
    prompts = write_jsonl(tmp_path / "prompts" / "p.jsonl", [{"prompt": f"发烧 {i} 天怎么办？"} for i in range(6)])
    argv = opd_argv(models, tmp_path / "out", "--max_steps", "2", "--opd_lambda", "0.5")
    argv[argv.index("--train_file_dir") + 1] = str(prompts.parent)
    with pytest.raises(UserError, match="6 training rows have no reference answer.*--opd_lambda 1"):
        opd_training.main(argv)
    assert not (tmp_path / "out").exists()
    sampled = []
    original = OnPolicyDistillTrainer.generate_on_policy_outputs
    monkeypatch.setattr(
        OnPolicyDistillTrainer,
        "generate_on_policy_outputs",
        lambda self, *rest: sampled.append(1) or original(self, *rest),
    )
    argv[argv.index("--opd_lambda") + 1] = "1"
    assert opd_training.main(argv).state.global_step == 2 and len(sampled) == 2
