"""RL stages on the tiny model: PPO raises the reward model's score, GRPO raises a rule reward; both save, merge and
answer through inference.py; MedicalGPT's command lines and data run; bad input is refused before any output."""

import json
import statistics
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_preference import BAD_ANSWER, GOOD_ANSWER, QUESTIONS, pair_rows

import grpo_training
import inference
import merge_peft_adapter
import ppo_training
import reward_modeling
import supervised_finetuning
from medgpt.errors import UserError

CHINESE_ANSWER = "多喝水，注意休息，如果持续发热请及时就医。"
QUIET = ["--report_to", "none", "--disable_tqdm", "True", "--validation_split_percentage", "0"]


def chat_rows(answers: list[str]) -> list[dict]:
    return [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for q in QUESTIONS
        for a in answers
    ]


@pytest.fixture(scope="module")
def rl_models(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """An SFT policy that answers with one of three memorised answers (mostly the bad one), a reward model that
    prefers the good answer, and chat prompts: the PPO -> GRPO playground."""
    root = tmp_path_factory.mktemp("rl")
    write_jsonl(root / "sft_data" / "train.jsonl", chat_rows([GOOD_ANSWER, CHINESE_ANSWER, BAD_ANSWER, BAD_ANSWER]))
    write_jsonl(root / "pairs" / "train.jsonl", pair_rows(QUESTIONS))
    write_jsonl(root / "prompts" / "train.jsonl", chat_rows(["ok"]))
    common = ["--template_name", "qwen", "--use_peft", "False", "--save_strategy", "no", *QUIET]
    supervised_finetuning.main(
        ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(root / "sft_data")]
        + ["--output_dir", str(root / "sft"), "--max_steps", "120", "--learning_rate", "1e-2"]
        + ["--per_device_train_batch_size", "8", "--logging_steps", "50", *common]
    )
    reward_modeling.main(
        ["--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(root / "pairs")]
        + ["--output_dir", str(root / "rm"), "--num_train_epochs", "8", "--learning_rate", "1e-3"]
        + ["--per_device_train_batch_size", "8", "--max_length", "128", "--logging_steps", "50", *common]
    )
    return {"root": root, "sft": root / "sft", "rm": root / "rm", "prompts": root / "prompts"}


def ppo_argv(models: dict, out: Path, *extra: str) -> list[str]:
    return [
        "--sft_model_path",
        str(models["sft"]),
        "--reward_model_path",
        str(models["rm"]),
        "--template_name",
        "qwen",
        "--train_file_dir",
        str(models["prompts"]),
        "--output_dir",
        str(out),
        "--response_length",
        "24",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--temperature",
        "1.0",
        "--learning_rate",
        "2e-3",
        "--save_strategy",
        "no",
        *QUIET,
        *extra,
    ]


def merge_and_answer(base: Path, adapter: Path, tmp_path: Path) -> list[dict]:
    merged = merge_peft_adapter.main(
        ["--base_model", str(base), "--lora_model", str(adapter), "--output_dir", str(tmp_path / "merged")]
    )
    (tmp_path / "questions.txt").write_text("I have a fever.\n发烧三天了怎么办？\n", encoding="utf-8")
    output = inference.main(
        ["--base_model", str(merged), "--data_file", str(tmp_path / "questions.txt")]
        + ["--output_file", str(tmp_path / "answers.jsonl"), "--max_new_tokens", "16", "--temperature", "0"]
    )
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def test_ppo_raises_the_reward_model_score_then_saves_merges_and_answers(rl_models, tmp_path):
    out = tmp_path / "ppo"
    trainer = ppo_training.main(ppo_argv(rl_models, out, "--max_steps", "24", "--report_to", "tensorboard"))
    history = trainer.state.log_history
    scores = [entry["objective/scores"] for entry in history if "objective/scores" in entry]
    assert len(scores) == 24, "a log entry per rollout batch"
    assert statistics.mean(scores[-5:]) > scores[0] + 0.4, scores  # the first rollout is the SFT policy's
    for name in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "policy/approxkl_avg"):
        assert name in history[0], name
    for name in ("policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/ratio", "val/response_length"):
        assert name in history[0], name
    assert history[0]["rollout/tokens_per_second"] > 0
    for name in ("adapter_model.safetensors", "trainer_state.json", "training_reward.png", "template_config.json"):
        assert (out / name).is_file(), name
    assert (out / "value_model" / "adapter_model.safetensors").is_file(), "the critic is kept beside the policy"
    assert list(out.glob("runs/*/events.out.tfevents.*")), "TensorBoard events"
    answers = merge_and_answer(rl_models["sft"], out, tmp_path)
    assert len(answers) == 2 and all(isinstance(a["Output"], str) for a in answers)


def test_ppo_resumes_to_the_same_adapter(rl_models, tmp_path):
    """A run stopped after a checkpoint and resumed ends with the adapter of an uninterrupted run."""
    from safetensors.torch import load_file

    steps = ["--max_steps", "4", "--num_ppo_epochs", "2", "--kl_target", "0.5"]
    ppo_training.main(ppo_argv(rl_models, tmp_path / "whole", *steps))
    # The same run with checkpoints, then again from its step-2 checkpoint: the resumed half writes the result.
    argv = ppo_argv(rl_models, tmp_path / "resumed", *steps)
    argv[argv.index("--save_strategy") + 1] = "steps"
    ppo_training.main([*argv, "--save_steps", "2"])
    checkpoint = tmp_path / "resumed" / "checkpoint-2"
    assert (checkpoint / "value_model" / "adapter_model.safetensors").is_file()
    assert json.loads((checkpoint / "ppo_state.json").read_text())["kl_coef"] != 0.05  # the adaptive coefficient
    ppo_training.main([*argv, "--save_steps", "2", "--resume_from_checkpoint", str(checkpoint)])
    whole = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    for name, tensor in whole.items():
        assert (tensor - resumed[name]).abs().max() < 1e-4, name


def test_ppo_with_the_value_head_on_the_policy(rl_models, tmp_path):
    """--value_head_on_policy: no critic model, one backbone forward a micro-batch; the score still rises, the head is
    saved beside the adapter, and a resumed run ends where an uninterrupted one does."""
    from safetensors.torch import load_file

    from medgpt.ppo import PolicyAndValue

    out = tmp_path / "shared"
    trainer = ppo_training.main(ppo_argv(rl_models, out, "--max_steps", "24", "--value_head_on_policy", "True"))
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(wrapper, PolicyAndValue) and wrapper.critic is None
    scores = [entry["objective/scores"] for entry in trainer.state.log_history if "objective/scores" in entry]
    assert statistics.mean(scores[-5:]) > scores[0] + 0.4, scores  # the first rollout is the SFT policy's
    head = load_file(out / "value_head.safetensors")
    assert set(head) == {"value_head.weight", "value_head.bias"} and head["value_head.weight"].abs().max() > 0
    assert not (out / "value_model").exists()

    steps = ["--max_steps", "4", "--value_head_on_policy", "True", "--save_strategy", "steps", "--save_steps", "2"]
    ppo_training.main(ppo_argv(rl_models, tmp_path / "whole", *steps))
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    assert (checkpoint / "value_head.safetensors").is_file()
    ppo_training.main(ppo_argv(rl_models, tmp_path / "resumed", *steps, "--resume_from_checkpoint", str(checkpoint)))
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        whole, resumed = load_file(tmp_path / "whole" / name), load_file(tmp_path / "resumed" / name)
        for key, tensor in whole.items():
            assert (tensor - resumed[key]).abs().max() < 1e-4, key


def test_medicalgpt_ppo_command_line(rl_models, tmp_path):
    """The PPO guide's flags on SFT-format data (chats whose answers are dropped), with an eval split."""
    out = tmp_path / "outputs-ppo-v1"
    trainer = ppo_training.main(
        ["--sft_model_path", str(rl_models["sft"]), "--reward_model_path", str(rl_models["rm"])]
        + ["--template_name", "qwen", "--train_file_dir", str(rl_models["root"] / "sft_data")]
        + ["--validation_file_dir", str(rl_models["prompts"]), "--max_source_length", "64"]
        + ["--response_length", "8", "--num_train_epochs", "1", "--per_device_train_batch_size", "8"]
        + ["--gradient_accumulation_steps", "4", "--do_train", "--eval_strategy", "steps", "--eval_steps", "2"]
        + ["--max_eval_samples", "4", "--output_dir", str(out), "--report_to", "tensorboard", "--disable_tqdm", "True"]
        + ["--save_strategy", "no"]
    )
    assert trainer.state.global_step == 3  # 96 prompts / 32 per rollout batch
    assert any("eval_objective/scores" in entry for entry in trainer.state.log_history)
    assert (out / "adapter_model.safetensors").is_file()


def test_ppo_full_fine_tuning_keeps_a_frozen_reference(rl_models, tmp_path):
    trainer = ppo_training.main(ppo_argv(rl_models, tmp_path / "full", "--max_steps", "2", "--use_peft", "False"))
    assert trainer.ref_policy is not None and not any(p.requires_grad for p in trainer.ref_policy.parameters())
    assert (tmp_path / "full" / "model.safetensors").is_file()


def grpo_argv(models: dict, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(models["sft"]),
        "--template_name",
        "qwen",
        "--train_file_dir",
        str(data),
        "--output_dir",
        str(out),
        "--num_generations",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--max_completion_length",
        "24",
        "--learning_rate",
        "5e-3",
        "--save_strategy",
        "no",
        "--system_prompt",
        "",
        *QUIET,
        *extra,
    ]


def test_grpo_raises_a_rule_reward_then_saves_merges_and_answers(rl_models, tmp_path):
    write_jsonl(tmp_path / "qa" / "train.jsonl", [{"question": q, "answer": GOOD_ANSWER} for q in QUESTIONS])
    out = tmp_path / "grpo"
    trainer = grpo_training.main(
        grpo_argv(rl_models, tmp_path / "qa", out, "--reward_funcs", "medical_accuracy", "--max_steps", "30")
    )
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert statistics.mean(rewards[-5:]) > statistics.mean(rewards[:5]) + 0.2, rewards
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_reward.png").is_file()
    answers = merge_and_answer(rl_models["sft"], out, tmp_path)
    assert len(answers) == 2


def test_grpo_on_medicalgpt_sample_gives_graded_rewards(rl_models, reference_data, tmp_path):
    """MedicalGPT's free-text Chinese question/answer rows: the medical reward varies between completions."""
    trainer = grpo_training.main(
        grpo_argv(rl_models, reference_data / "grpo", tmp_path / "grpo", "--max_steps", "6", "--temperature", "1.2")
        + ["--reward_funcs", "medical_accuracy", "format", "--reward_weights", "1.0", "0.5"]
    )
    logged = [entry for entry in trainer.state.log_history if "rewards/medical_accuracy/std" in entry]
    assert len(logged) == 6
    assert any(entry["rewards/medical_accuracy/std"] > 0 for entry in logged), logged
    assert any(entry["rewards/medical_accuracy/mean"] > 0 for entry in logged), logged


def test_grpo_reward_model_and_multiple_choice_rows(rl_models, tmp_path):
    rows = [
        {"question": q, "options": {"A": GOOD_ANSWER, "B": BAD_ANSWER}, "answer": "A", "source": "demo"}
        for q in QUESTIONS[:8]
    ]
    write_jsonl(tmp_path / "mc" / "train.jsonl", rows)
    trainer = grpo_training.main(
        grpo_argv(rl_models, tmp_path / "mc", tmp_path / "out", "--max_steps", "1")
        + ["--reward_funcs", "choice_accuracy", "reward_model", "--reward_model_path", str(rl_models["rm"])]
    )
    assert "rewards/reward_model/mean" in trainer.state.log_history[0]
    assert "rewards/choice_accuracy/mean" in trainer.state.log_history[0]


@pytest.mark.parametrize(
    ("script", "extra", "message"),
    [
        ("grpo", ["--per_device_train_batch_size", "6"], r"--per_device_train_batch_size 6.*--num_generations 4"),
        ("grpo", ["--reward_funcs", "medical_acuracy"], r"did you mean 'medical_accuracy'"),
        ("grpo", ["--reward_weights", "1", "2", "3"], r"--reward_weights has 3 values"),
        ("ppo", ["--per_device_train_batch_size", "64"], r"= 128 prompts, but there are only 24"),
        ("ppo", ["--reward_model_path", ""], r"--reward_model_path is required"),
        ("ppo", ["--response_length", "0"], r"--response_length 0 must be >= 1"),
        ("ppo", ["--value_head_on_policy", "True", "--value_model_path", "rm"], r"--value_model_path rm must be left"),
        ("ppo", ["--train_file_dir", "BAD"], r"train\.jsonl:2: .*no prompt found"),
    ],
)
def test_bad_input_is_refused_before_any_output(rl_models, tmp_path, script, extra, message):
    write_jsonl(tmp_path / "bad" / "train.jsonl", [{"question": "ok?"}, {"nothing": "here"}])
    out = tmp_path / "out"
    if "BAD" in extra:
        extra = ["--train_file_dir", str(tmp_path / "bad")]
    with pytest.raises(UserError, match=message):
        if script == "grpo":
            grpo_training.main(grpo_argv(rl_models, rl_models["prompts"], out, "--max_steps", "1", *extra))
        else:
            ppo_training.main(ppo_argv(rl_models, out, "--max_steps", "1", *extra))
    assert not out.exists() or not any(out.iterdir())


def test_critic_needs_the_policy_tokenizer(rl_models, tmp_path):
    import shutil

    from tiny_model import build_tokenizer

    other = Path(shutil.copytree(rl_models["rm"], tmp_path / "other-rm"))
    build_tokenizer(vocab_size=500).save_pretrained(other)
    with pytest.raises(UserError, match="--value_model_path"):
        ppo_training.main(ppo_argv(rl_models, tmp_path / "out", "--value_model_path", str(other)))
    assert not (tmp_path / "out").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_ppo_under_torchrun_and_deepspeed(rl_models, tmp_path, launcher):
    """Two DDP processes (gloo), or one DeepSpeed ZeRO-2 process, with checkpoints."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / launcher
    port = str(free_port())
    argv = ppo_argv(rl_models, out, "--response_length", "8", "--per_device_train_batch_size", "2", "--max_steps", "2")
    argv[argv.index("--save_strategy") + 1] = "steps"
    argv += ["--save_steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
        command += ["ppo_training.py", *argv, "--ddp_backend", "gloo"]
    else:
        pytest.importorskip("deepspeed")
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        command = [sys.executable, "ppo_training.py", *argv, "--deepspeed", "zero2.json"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and "objective/scores" in state["log_history"][0]
    assert (out / "checkpoint-2" / "value_model" / "adapter_model.safetensors").is_file()
    assert (out / "adapter_model.safetensors").is_file()


def test_a_language_model_is_refused_as_reward_model(rl_models, tmp_path):
    with pytest.raises(UserError, match=r"--reward_model_path .* is a language model, not a reward model"):
        ppo_training.main(ppo_argv(rl_models, tmp_path / "out", "--reward_model_path", str(rl_models["sft"])))
    with pytest.raises(UserError, match=r"--reward_model_path \./nowhere: no such folder"):
        ppo_training.main(ppo_argv(rl_models, tmp_path / "out", "--reward_model_path", "./nowhere"))
    assert not (tmp_path / "out").exists()


def test_ppo_flags_change_the_run(rl_models, tmp_path):
    """--total_episodes sets the step count, --num_mini_batches the optimizer steps per epoch, --missing_eos_penalty
    lowers the score of unfinished answers, --kl_target adapts the KL coefficient."""
    short = ["--response_length", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
    plain = ppo_training.main(ppo_argv(rl_models, tmp_path / "a", *short, "--total_episodes", "4"))
    assert plain.state.global_step == 2
    penalised = ppo_training.main(
        ppo_argv(rl_models, tmp_path / "b", *short, "--total_episodes", "4", "--missing_eos_penalty", "5")
        + ["--num_mini_batches", "2", "--kl_target", "0.1", "--kl_coef", "0.2"]
    )
    first, other = plain.state.log_history[0], penalised.state.log_history[0]
    unfinished = first["val/num_eos_tokens"] == 0 and other["val/num_eos_tokens"] == 0
    assert unfinished and other["objective/scores"] == pytest.approx(first["objective/scores"] - 5, abs=1.0)
    assert penalised.state.global_step == 1  # 4 episodes / (2 x 1 x 2 mini-batches)
    coefficients = [
        entry["objective/kl_coef"] for entry in penalised.state.log_history if "objective/kl_coef" in entry
    ]
    assert coefficients[0] == 0.2 and penalised.kl_ctl.value != 0.2
    assert penalised.optimizer.state  # every minibatch stepped the optimizer


def test_ppo_and_grpo_take_config_files_and_help(tmp_path, capsys):
    from medgpt import args

    (tmp_path / "ppo.yaml").write_text("kl_coef: 0.02\nresponse_length: 64\nsft_model_path: merged-sft\n")
    parsed = args.parse(ppo_training.ARG_TYPES, ["--config", str(tmp_path / "ppo.yaml"), "--kl_coef", "0.3"])
    assert (
        parsed[4].kl_coef == 0.3 and parsed[4].response_length == 64 and parsed[0].model_name_or_path == "merged-sft"
    )
    assert args.parse(ppo_training.ARG_TYPES, ["--max_completion_length", "32"])[4].response_length == 32
    (tmp_path / "grpo.yaml").write_text("reward_funcs: [choice_accuracy, format]\nnum_generations: 2\n")
    parsed = args.parse(grpo_training.ARG_TYPES, ["--config", str(tmp_path / "grpo.yaml")])
    assert parsed[4].reward_funcs == ["choice_accuracy", "format"] and parsed[-1].num_generations == 2
    for script, flag in ((ppo_training, "--kl_coef"), (grpo_training, "--reward_funcs")):
        with pytest.raises(SystemExit) as done:
            script.main(["--help"])
        assert done.value.code == 0 and flag in capsys.readouterr().out


def test_medicalgpt_grpo_flags_parse():
    """The flags of MedicalGPT's GRPO launch script, TRL-era names included."""
    from medgpt import args

    flags = "--train_file_dir data/grpo --train_samples -1 --max_steps -1 --num_train_epochs 1 --save_steps 50"
    flags += " --save_strategy steps --save_total_limit 13 --output_dir outputs-grpo-v1 --dtype bfloat16 --bf16 True"
    flags += " --report_to tensorboard --remove_unused_columns False --gradient_checkpointing False --beta 0.001"
    flags += " --learning_rate 5.0e-7 --lr_scheduler_type cosine --warmup_ratio 0.03 --use_vllm False"
    flags += " --logging_steps 10 --use_peft True --qlora False --load_in_4bit False"
    flags += " --lora_target_modules q_proj k_proj v_proj o_proj gate_proj up_proj down_proj --lora_r 16"
    flags += " --lora_alpha 32 --lora_dropout 0.1 --per_device_train_batch_size 4 --per_device_eval_batch_size 1"
    flags += " --num_generations 4 --gradient_accumulation_steps 1 --max_completion_length 512"
    model_args, lora_args, data_args, _, grpo_args, _, config = args.parse(
        grpo_training.ARG_TYPES, ["--model_name_or_path", "m", *flags.split()], grpo_training.DEFAULTS
    )
    assert model_args.torch_dtype == "bfloat16" and lora_args.lora_rank == 16 and config.warmup_steps == 0.03
    assert lora_args.target_modules == "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    assert data_args.max_train_samples == -1 and config.num_generations == 4  # -1: every row
