"""GRPO trains on what it sampled: the log-probs TRL's loss uses equal the distributions generate drew each token
from, whatever the checkpoint's generation_config says; sampling settings that would make it off-policy are refused."""

import pytest
import torch
from conftest import assert_phase_seconds, forward_shapes, record_sampling, write_jsonl
from trl import GRPOTrainer

import grpo_training
from medgpt.errors import UserError

QUIET = ["--report_to", "none", "--disable_tqdm", "True", "--validation_split_percentage", "0"]
QUESTIONS = ["I have a fever.", "My knee hurts.", "发烧三天了怎么办？", "Is aspirin safe?"]


def grpo_argv(policy, data, out, *extra):
    return [
        "--model_name_or_path", str(policy), "--template_name", "chatml", "--train_file_dir", str(data),
        "--output_dir", str(out), "--num_generations", "4", "--per_device_train_batch_size", "8",
        "--max_completion_length", "12", "--max_steps", "1", "--temperature", "0.9", "--save_strategy", "no",
        "--reward_funcs", "medical_accuracy", *QUIET, *extra,
    ]  # fmt: skip


def test_loss_log_probs_are_the_sampling_distributions(eos_padded_policy, tmp_path, monkeypatch):
    write_jsonl(tmp_path / "qa" / "train.jsonl", [{"question": q, "answer": "rest and fluids"} for q in QUESTIONS])
    sampled, trained = record_sampling(monkeypatch), []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def per_token_logps(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        result = original(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        trained.append((input_ids[:, -logits_to_keep:], result[0].detach()))
        return result

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", per_token_logps)
    # fp32 throughout: under --bf16 autocast TRL's loss forward runs in bf16 while generate runs in the weights' dtype.
    trainer = grpo_training.main(grpo_argv(eos_padded_policy, tmp_path / "qa", tmp_path / "out", "--bf16", "False"))
    eos = trainer.processing_class.eos_token_id
    drawn = {}  # completion tokens (to the first stop) -> the log-prob generate drew each with
    for sequences, scores in sampled:
        completions = sequences[:, -scores.shape[1] :]
        logps = torch.log_softmax(scores.float(), -1).gather(-1, completions[..., None]).squeeze(-1)
        for ids, row in zip(completions.tolist(), logps, strict=True):
            end = ids.index(eos) + 1 if eos in ids else len(ids)
            drawn[tuple(ids[:end])] = row[:end]
    compared = 0
    for completions, logps in trained:
        for ids, row in zip(completions.tolist(), logps, strict=True):
            end = ids.index(eos) + 1 if eos in ids else len(ids)
            if tuple(ids[:end]) in drawn:
                assert torch.allclose(row[:end], drawn[tuple(ids[:end])], atol=1e-4)
                compared += 1
    assert compared >= 8, compared


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--top_p", "0.9"], "--top_p 0.9"),
        (["--top_k", "20"], "--top_k 20"),
        (["--repetition_penalty", "1.05"], "--repetition_penalty 1.05"),
        (["--generation_kwargs", '{"no_repeat_ngram_size": 3}'], "no_repeat_ngram_size=3"),
    ],
)
def test_off_policy_sampling_is_refused(eos_padded_policy, tmp_path, flags, named):
    with pytest.raises(UserError, match="off-policy") as error:
        grpo_training.main(grpo_argv(eos_padded_policy, tmp_path, tmp_path / "out", *flags))
    assert named in str(error.value)
    assert not (tmp_path / "out").exists()


def test_every_rollout_is_generated_with_the_kv_cache(eos_padded_policy, tmp_path, monkeypatch):
    """With --gradient_checkpointing, generate still runs the prompt once and then one new token per forward pass.
    The same run logs each step's phase seconds (--beta > 0: a reference forward to time too)."""
    from transformers import GenerationMixin

    write_jsonl(tmp_path / "qa" / "train.jsonl", [{"question": q, "answer": "rest and fluids"} for q in QUESTIONS])
    calls, original = [], GenerationMixin.generate

    def generate(self, *args, **kwargs):
        with forward_shapes(self) as shapes:
            calls.append(shapes)  # filled while generate runs
            return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", generate)
    extra = ("--gradient_checkpointing", "True", "--max_steps", "2", "--bf16", "False", "--beta", "0.04")
    grpo_training.main(grpo_argv(eos_padded_policy, tmp_path / "qa", tmp_path / "out", *extra))
    assert len(calls) >= 2
    for shapes in calls:
        widths = [width for _, width in shapes]
        assert len(widths) > 1 and set(widths[1:]) == {1}, f"a forward pass over the whole sequence ({shapes})"
    logged = assert_phase_seconds(tmp_path / "out", steps=2)
    assert all(entry["time/rollout_forward"] > 0 for entry in logged)
