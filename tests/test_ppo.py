"""PPOTrainer feeds its maths what was sampled: the prompt mask generate attended to (pad == eos too), rollouts drawn
from softmax(logits / T) alone whatever the checkpoint's generation_config says, and a reference that is the policy
PPO starts from when it continues an adapter (--peft_path)."""

import pytest
import torch
from conftest import assert_phase_seconds, forward_shapes, record_sampling, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import ppo_training
from medgpt.generation import InverseCdfSampler
from medgpt.ppo import PPOTrainer

QUIET = ["--report_to", "none", "--disable_tqdm", "True", "--validation_split_percentage", "0"]
PROMPTS = [
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": q}]}
    for q in ("I have a fever.", "My knee hurts.", "发烧三天了怎么办？", "Is aspirin safe?")
]


def record_rollouts(monkeypatch) -> list:
    rollouts = []
    original = PPOTrainer.rollout_forward

    def rollout_forward(self, model, queries, query_mask, responses, order):
        result, first = original(self, model, queries, query_mask, responses, order)
        rollouts.append((queries, query_mask, responses, *result))
        return result, first

    monkeypatch.setattr(PPOTrainer, "rollout_forward", rollout_forward)
    return rollouts


def ppo_argv(policy, reward_dir, prompts, out, *extra):
    return [
        "--sft_model_path", str(policy), "--reward_model_path", str(reward_dir), "--template_name", "chatml",
        "--train_file_dir", str(prompts), "--output_dir", str(out), "--response_length", "12",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--temperature", "0.9",
        "--max_steps", "2", "--num_ppo_epochs", "1", "--save_strategy", "no", *QUIET, *extra,
    ]  # fmt: skip


def record_draws(monkeypatch) -> list:
    """Every token the rollout sampler draws: (the log-distribution it drew from [B, V], the scores it returned)."""
    draws = []
    original = InverseCdfSampler.__call__

    def call(self, input_ids, scores):
        returned = original(self, input_ids, scores)
        draws.append((torch.log_softmax(scores.float() / self.temperature, dim=-1), returned))
        return returned

    monkeypatch.setattr(InverseCdfSampler, "__call__", call)
    return draws


def test_rollout_log_probs_are_the_sampling_distributions(eos_padded_policy, reward_dir, tmp_path, monkeypatch):
    write_jsonl(tmp_path / "prompts" / "train.jsonl", PROMPTS)
    sampled, draws = record_sampling(monkeypatch), record_draws(monkeypatch)
    rollouts = record_rollouts(monkeypatch)
    ppo_training.main(ppo_argv(eos_padded_policy, reward_dir, tmp_path / "prompts", tmp_path / "out"))
    assert len(sampled) == len(rollouts) == 2
    tokenizer = AutoTokenizer.from_pretrained(eos_padded_policy)
    hidden_turn_ends = 0
    for (sequences, scores), (queries, query_mask, responses, logprobs, *_) in zip(sampled, rollouts, strict=True):
        # The prompt holds turn ends that equal pad; the mask PPO used still attends to them.
        turn_ends = (queries == tokenizer.pad_token_id) & query_mask.bool()
        hidden_turn_ends += int(turn_ends.sum())
        steps = scores.shape[1]
        assert torch.equal(sequences[:, queries.shape[1] :], responses[:, :steps])
        drawn_from, returned = (torch.stack(parts, dim=1) for parts in zip(*draws[:steps], strict=True))
        del draws[:steps]
        assert torch.equal(returned, scores), "generate took the sampler's token, through no other processor"
        sampling = drawn_from.gather(-1, responses[:, :steps, None]).squeeze(-1)
        real = sampling > -1e9  # generate's scores after a row finished are of no interest
        mask = torch.ones_like(real)
        for row, ids in enumerate(responses[:, :steps]):
            stop = (ids == tokenizer.eos_token_id).nonzero()
            if len(stop):
                mask[row, stop[0, 0] + 1 :] = False
        assert (real | ~mask).all(), "a sampled token the checkpoint's top-k would have cut"
        assert torch.allclose(logprobs[:, :steps][mask], sampling[mask], atol=1e-4), (
            (logprobs[:, :steps][mask] - sampling[mask]).abs().max()
        )
    assert hidden_turn_ends >= 8, "every prompt has two turn ends (system, user) that equal the pad id"
    assert not draws, "every draw belongs to a rollout"
    # The checkpoint's sampling settings are back on the saved model, for inference.
    saved = GenerationConfig.from_pretrained(eos_padded_policy)
    assert saved.repetition_penalty == 1.3 and saved.top_k == 5


def test_continued_adapter_is_its_own_reference(eos_padded_policy, reward_dir, tmp_path, monkeypatch):
    """--peft_path: at the first rollout the policy is its reference (KL 0), and only the trained adapter is saved."""
    from peft import LoraConfig, get_peft_model

    write_jsonl(tmp_path / "prompts" / "train.jsonl", PROMPTS)
    torch.manual_seed(1)
    start = get_peft_model(
        AutoModelForCausalLM.from_pretrained(eos_padded_policy),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),  # far from the base on purpose
    )
    start.save_pretrained(tmp_path / "start")
    rollouts = record_rollouts(monkeypatch)
    out = tmp_path / "out"
    trainer = ppo_training.main(
        ppo_argv(eos_padded_policy, reward_dir, tmp_path / "prompts", out, "--peft_path", str(tmp_path / "start"))
    )
    _, _, _, logprobs, _, ref_logprobs, _ = rollouts[0]
    assert torch.allclose(logprobs, ref_logprobs, atol=1e-5), "the reference is the adapter PPO starts from"
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    ids = torch.tensor([[5, 17, 42, 99]])
    with policy.disable_adapter():
        base_logits = policy(input_ids=ids).logits
    with trainer.reference(policy) as reference:
        assert not torch.allclose(reference(input_ids=ids).logits, base_logits), "the base is not the reference"
    assert trainer.state.log_history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "reference").exists()
    assert not any(p.requires_grad for name, p in policy.named_parameters() if ".reference." in name)
    assert any(p.requires_grad for name, p in policy.named_parameters() if ".default." in name)


def test_the_trainer_internals_ppo_runs_on_are_pinned():
    import transformers
    from transformers import Trainer

    from medgpt.ppo import TRAINER_INTERNALS, check_trainer_internals

    check_trainer_internals()  # the pinned transformers has every one
    assert "_inner_training_loop" in TRAINER_INTERNALS and "_finalize_training" in TRAINER_INTERNALS

    class Changed(Trainer):
        _finalize_training = None

        def _load_rng_state(self, path):  # renamed parameter
            pass

    with pytest.raises(RuntimeError) as error:
        check_trainer_internals(Changed)
    message = str(error.value)
    assert "Trainer._finalize_training is gone" in message and "_load_rng_state no longer takes checkpoint" in message
    assert transformers.__version__ in message


def test_every_rollout_is_generated_with_the_kv_cache(eos_padded_policy, reward_dir, tmp_path, monkeypatch):
    """With --gradient_checkpointing (a layer checkpointed in training mode drops the KV cache), each rollout still
    runs the prompt once and then one new token per forward pass. On the CPU the prompt runs ahead without its
    padding (medgpt.generation.prefilled_without_padding): the beginning all rows share once, then the rows' own
    tokens but their last packed into one row, never a padded column; generate's first pass is then the prompts' last
    column. The same run logs each step's phase seconds."""
    long = {"conversations": [{"from": "human", "value": "My knee hurts after running. " * 12}]}
    write_jsonl(tmp_path / "prompts" / "train.jsonl", [*PROMPTS[:3], long])  # one long prompt pads the rollout
    calls, original = [], PPOTrainer.generate

    def generate(self, model, batch):
        with forward_shapes(self.accelerator.unwrap_model(model).policy) as shapes:
            queries, query_mask, responses = original(self, model, batch)
        calls.append((query_mask, responses.shape[1], shapes))
        return queries, query_mask, responses

    monkeypatch.setattr(PPOTrainer, "generate", generate)
    extra = ("--gradient_checkpointing", "True", "--max_steps", "3")
    ppo_training.main(ppo_argv(eos_padded_policy, reward_dir, tmp_path / "prompts", tmp_path / "out", *extra))
    assert len(calls) == 3
    for query_mask, answer_columns, shapes in calls:
        ahead, decoded = shapes[:-answer_columns], shapes[-answer_columns:]  # a forward per answer column
        rows = query_mask.shape[0]
        assert decoded == [(rows, 1)] * answer_columns, f"a pass over the whole sequence: no KV cache ({shapes})"
        assert len(ahead) in (1, 2) and all(n == 1 for n, _ in ahead), f"a padded prompt pass ({shapes})"
        shared = ahead[0][1] if len(ahead) == 2 else 0  # the beginning all rows share, run once
        real = int((query_mask.sum(1) - 1).sum())  # the prompts' real tokens but their last
        assert sum(width for _, width in ahead) == real - (rows - 1) * shared, "the prompt ran more than once"
    logged = assert_phase_seconds(tmp_path / "out", steps=3)
    assert all(entry["time/rollout_forward"] > 0 for entry in logged)


def test_the_forwards_stop_at_the_longest_answer(eos_padded_policy, reward_dir, tmp_path, monkeypatch):
    """When every answer ends before --response_length, the rollout forward and every update forward run over the
    prompt and the longest answer only; the columns after it hold no real token of any row."""
    from medgpt.ppo import PolicyAndValue

    write_jsonl(tmp_path / "prompts" / "train.jsonl", PROMPTS)
    eos = AutoTokenizer.from_pretrained(eos_padded_policy).eos_token_id
    original_generate, original_forward = PPOTrainer.generate, PolicyAndValue.forward
    widths = []

    def generate(self, model, batch):  # answers of 2, 4, 3 and 4 tokens (the stop token included) out of 12 columns
        queries, query_mask, responses = original_generate(self, model, batch)
        responses = torch.cat([responses, responses.new_full((4, 12), eos)], dim=1)[:, :12]
        for row, length in enumerate((1, 3, 2, 3)):
            responses[row, length:] = eos
        return queries, query_mask, responses

    def forward(self, *args, logits_to_keep, **kwargs):  # the head reads the last prompt position and the answers
        widths.append(logits_to_keep - 1)
        return original_forward(self, *args, logits_to_keep=logits_to_keep, **kwargs)

    monkeypatch.setattr(PPOTrainer, "generate", generate)
    monkeypatch.setattr(PolicyAndValue, "forward", forward)
    out = tmp_path / "out"
    ppo_training.main(
        ppo_argv(eos_padded_policy, reward_dir, tmp_path / "prompts", out, "--num_ppo_epochs", "2", "--max_steps", "1")
    )
    assert widths == [4] * (2 + 4 - 1), "a forward ran over columns after the longest answer"
    logged = assert_phase_seconds(out, steps=1)
    assert logged[0]["val/response_length"] == pytest.approx((2 + 4 + 3 + 4) / 4)
    assert logged[0]["val/response_length_max"] == 4
    # Answer tokens (13) and decoded tokens (4 rows x 4) per second of the same generate phase.
    generate_seconds = logged[0]["time/generate"]
    assert logged[0]["rollout/tokens_per_second"] * generate_seconds == pytest.approx(13, rel=1e-4)
    assert logged[0]["rollout/decoded_tokens_per_second"] * generate_seconds == pytest.approx(16, rel=1e-4)


def test_the_update_reuses_the_rollout_forward_of_its_first_micro_batch(
    eos_padded_policy, reward_dir, tmp_path, monkeypatch
):
    """The update's first micro-batch backpropagates through the rollout's own forward (same rows, same weights): one
    forward of policy and critic fewer per step, and the same trained adapters as a run that repeats that forward."""
    from safetensors.torch import load_file

    from medgpt.ppo import PolicyAndValue

    write_jsonl(tmp_path / "prompts" / "train.jsonl", PROMPTS)
    forwards, original_forward = [], PolicyAndValue.forward

    def forward(self, *args, **kwargs):
        forwards.append(torch.is_grad_enabled())
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(PolicyAndValue, "forward", forward)
    extra = ("--num_ppo_epochs", "2", "--learning_rate", "1e-2")  # 2 rollout + 2 x 2 update micro-batches a step
    ppo_training.main(ppo_argv(eos_padded_policy, reward_dir, tmp_path / "prompts", tmp_path / "reused", *extra))
    assert len(forwards) == 2 * (2 + 4 - 1), "the first update micro-batch ran a forward of its own"
    assert forwards[:2] == [True, False], "the rollout's first micro-batch keeps its graph, the second does not"

    forwards.clear()
    original_rollout = PPOTrainer.rollout_forward

    def rollout_forward_without_graph(self, *args):
        result, _ = original_rollout(self, *args)
        return result, None

    monkeypatch.setattr(PPOTrainer, "rollout_forward", rollout_forward_without_graph)
    ppo_training.main(ppo_argv(eos_padded_policy, reward_dir, tmp_path / "prompts", tmp_path / "repeated", *extra))
    assert len(forwards) == 2 * (2 + 4)
    for folder in ("", "value_model"):
        reused = load_file(tmp_path / "reused" / folder / "adapter_model.safetensors")
        repeated = load_file(tmp_path / "repeated" / folder / "adapter_model.safetensors")
        assert any(tensor.abs().max() > 0 for name, tensor in reused.items() if "lora_B" in name), "nothing trained"
        for name, tensor in reused.items():
            assert torch.allclose(tensor, repeated[name], atol=1e-6), name


def test_the_system_prompt_every_row_shares_runs_once(eos_padded_policy, reward_dir, tmp_path, monkeypatch):
    """One system prompt for all rows: every forward of a step (rollout, update, the reference's) runs it once, not
    once per row, and the step's log-probs, reference log-probs, values and trained adapters are those of a run that
    repeats it in every row. Under activation checkpointing (whose layers drop a passed KV cache) rows run in full."""
    from safetensors.torch import load_file

    from medgpt.ppo import PolicyAndValue

    system = "You are a careful medical assistant. Answer briefly, and send emergencies to a doctor at once."
    prompts = [{"conversations": [{"from": "system", "value": system}, *row["conversations"][1:]]} for row in PROMPTS]
    write_jsonl(tmp_path / "prompts" / "train.jsonl", prompts)
    prefixes, original_forward = [], PolicyAndValue.forward

    def forward(self, *args, prefix_ids=None, **kwargs):
        prefixes.append(None if prefix_ids is None else prefix_ids.shape[1])
        return original_forward(self, *args, prefix_ids=prefix_ids, **kwargs)

    monkeypatch.setattr(PolicyAndValue, "forward", forward)
    rollouts = record_rollouts(monkeypatch)
    extra = ("--num_ppo_epochs", "2", "--max_steps", "1", "--learning_rate", "1e-2")
    tokenizer = AutoTokenizer.from_pretrained(eos_padded_policy)
    system_tokens = len(tokenizer(system)["input_ids"])

    def run(name: str, *flags: str) -> dict:
        prefixes.clear()
        ppo_training.main(
            ppo_argv(eos_padded_policy, reward_dir, tmp_path / "prompts", tmp_path / name, *extra, *flags)
        )
        return {
            folder: load_file(tmp_path / name / folder / "adapter_model.safetensors") for folder in ("", "value_model")
        }

    shared = run("shared")
    assert len(prefixes) == 2 + 4 - 1 and all(p is not None and p >= system_tokens for p in prefixes), prefixes
    monkeypatch.setattr(PPOTrainer, "shares_prefix", lambda self: False)
    full = run("full")
    assert prefixes == [None] * (2 + 4 - 1)
    for name, a, b in zip(
        ("queries", "query_mask", "responses", "logprobs", "values", "ref", "entropy"), *rollouts, strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    for folder, tensors in shared.items():
        assert any(t.abs().max() > 0 for n, t in tensors.items() if "lora_B" in n), "nothing trained"
        for name, tensor in tensors.items():
            assert torch.allclose(tensor, full[folder][name], atol=1e-4), name  # Adam over float rounding: ~2e-5

    monkeypatch.undo()
    monkeypatch.setattr(PolicyAndValue, "forward", forward)
    run("checkpointed", "--gradient_checkpointing", "True")
    assert prefixes == [None] * (2 + 4 - 1), "checkpointed layers would drop the prefix's KV cache"
