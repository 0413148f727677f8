"""PPO for language models (Ouyang et al. 2022, as in TRL's former PPOTrainer), on the Trainer's plumbing.

`PPOTrainer` subclasses `transformers.Trainer` and replaces only its inner loop, so optimizer and scheduler
creation, accelerate (DDP) and DeepSpeed wrapping, checkpoints (`_save_checkpoint`), resuming, callbacks,
TensorBoard logging and `trainer_state.json` are the Trainer's own. One step of the loop is one rollout batch:

  1. generate: answers to a batch of prompts, sampled with the KV cache, stopped at the template's stop token, with
     a float32 LoRA adapter merged into the weights for the while (medgpt.generation.lora_merged), and on the CPU
     with the prompts run ahead without their padding (medgpt.generation.prefilled_without_padding) and over
     weights packed for the batch's decode steps (medgpt.generation.packed_for_batch);
  2. score: the reward model scores every finished answer (through text, in its own template); log-probs of the
     policy and of the reference (the policy with its adapter switched off), and the critic's values; the first
     micro-batch's forward keeps its graph, and the update backpropagates through it rather than repeating it;
     every forward runs over the prompt and the batch's longest answer only (ppo_math.answer_width), and the
     beginning all prompts share (a system prompt) runs once, not once per row (medgpt.shared_prefix);
  3. advantages: per-token KL penalty, score on the last token, GAE, whitened advantages;
  4. update: `num_ppo_epochs` passes over `num_mini_batches` shuffled minibatches with the clipped policy and value
     losses; each minibatch is one optimizer step over `gradient_accumulation_steps` micro-batches.

Every step also logs the wall-clock seconds of its phases (`time/generate`, `time/score`, `time/rollout_forward`,
`time/update`; advantages are the small rest) and of the whole step (`time/step`), as medgpt.timing measures them.

Left out on purpose: reward clipping and value-head warm-up (not used by the common recipes), and generation with
vLLM (rollouts use `generate` with the KV cache).
"""

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import load_sharded_checkpoint
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits, selective_log_softmax

from medgpt import ppo_math
from medgpt.errors import UserError
from medgpt.generation import (
    cut_at_stop,
    exact_sampling,
    generation_kwargs,
    lora_merged,
    packed_for_batch,
    prefilled_without_padding,
    sampling_exactly_as_given,
    stop_tokens,
)
from medgpt.shared_prefix import forward_after_prefix, left_pad, model_inputs, supports_shared_prefix
from medgpt.timing import clock, timed

logger = logging.getLogger(__name__)
VALUE_MODEL_DIR = "value_model"
VALUE_HEAD_FILE = "value_head.safetensors"  # --value_head_on_policy's critic, beside the policy
REFERENCE_ADAPTER = "reference"  # the frozen copy of a --peft_path adapter PPO starts from
PPO_STATE = "ppo_state.json"


@dataclass
class PPOArguments:
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Trained (merged) reward model scoring the answers; kept frozen."}
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "Model the critic starts from (default: the reward model)."}
    )
    value_head_on_policy: bool = field(
        default=False,
        metadata={
            "help": "The critic is a value head on the policy's own backbone (TRL's former PPO, MedicalGPT's PPO "
            "before 2026) instead of a model of its own: one backbone forward gives log-probs and values, so a step "
            "is about a third cheaper and the critic's weights are gone from memory; the value loss (--vf_coef) then "
            "also trains the policy's adapter."
        },
    )
    max_source_length: int = field(default=1024, metadata={"help": "Most prompt tokens (the oldest are cut)."})
    response_length: int = field(default=256, metadata={"help": "Most tokens generated per answer."})
    total_episodes: int | None = field(
        default=None, metadata={"help": "Prompts to train on in all (default: num_train_epochs x the prompts)."}
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches (optimizer steps) per PPO epoch."})
    kl_coef: float = field(
        default=0.05, metadata={"help": "Weight of the per-token KL penalty (initial if adaptive)."}
    )
    kl_target: float | None = field(
        default=None, metadata={"help": "Adapt kl_coef towards this KL per answer (Ziegler et al.); None = fixed."}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Rollouts over which the adaptive coefficient moves."})
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator: k1 or k3."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value predictions."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the token rewards before GAE."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of answers that hit the length limit unfinished."}
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(
        default=1.0,
        metadata={"help": "Must stay 1.0: the ratio and KL are computed on the whole distribution, not a nucleus."},
    )
    system_prompt: str = field(default="", metadata={"help": "System prompt for prompts that have none."})

    def __post_init__(self) -> None:
        problems = [
            f"--{name} {value} must be {rule}"
            for name, value, ok, rule in (
                ("response_length", self.response_length, self.response_length >= 1, ">= 1"),
                ("max_source_length", self.max_source_length, self.max_source_length >= 1, ">= 1"),
                ("num_ppo_epochs", self.num_ppo_epochs, self.num_ppo_epochs >= 1, ">= 1"),
                ("num_mini_batches", self.num_mini_batches, self.num_mini_batches >= 1, ">= 1"),
                ("temperature", self.temperature, self.temperature > 0, "> 0 (PPO samples its rollouts)"),
                (
                    "top_p",
                    self.top_p,
                    self.top_p == 1,
                    "1.0: PPO's ratio, KL and entropy are computed on the policy's whole distribution (logits / "
                    "temperature), so answers sampled from a nucleus would be off-policy; lower --temperature instead",
                ),
                ("kl_estimator", self.kl_estimator, self.kl_estimator in ("k1", "k3"), "k1 or k3"),
                ("kl_target", self.kl_target, self.kl_target is None or self.kl_target > 0, "> 0"),
                ("total_episodes", self.total_episodes, self.total_episodes is None or self.total_episodes > 0, "> 0"),
                (
                    "value_model_path",
                    self.value_model_path,
                    not (self.value_head_on_policy and self.value_model_path),
                    "left out with --value_head_on_policy, whose critic is a head on the policy, not a model of its "
                    "own; drop one of the two flags",
                ),
            )
            if not ok
        ]
        if problems:
            raise UserError("invalid PPO arguments:\n  - " + "\n  - ".join(problems))


class PolicyAndValue(nn.Module):
    """The policy (causal LM) and the critic as one module, so one optimizer, DDP or DeepSpeed engine and checkpoint
    covers both. The critic is a sequence classifier whose score head is read at every token, or (critic None) a
    one-output value head on the policy's last hidden states (--value_head_on_policy)."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None) -> None:
        super().__init__()
        self.policy, self.critic = policy, critic
        self.config = policy.config  # what DeepSpeed sizes its buckets from, and what the Trainer logs
        if critic is None:
            # Zero at the start: values begin at 0 and the value loss sends no gradient into the policy until the
            # head has learnt something. float32 whatever the policy's dtype, like the adapter's weights.
            self.value_head = nn.Linear(policy.config.hidden_size, 1, device=policy.device, dtype=torch.float32)
            nn.init.zeros_(self.value_head.weight), nn.init.zeros_(self.value_head.bias)
        else:
            critic_model = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
            self._critic_backbone = getattr(critic_model, critic_model.base_model_prefix)
            self._critic_head = critic_model.score

    def forward(
        self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0, prefix_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """logits [B, K, V] of the policy at the last K = logits_to_keep positions (0: all L), values [B, L] of the
        critic. With `prefix_ids` [1, P] the rows continue that shared prefix (medgpt.shared_prefix): input_ids and
        position_ids [B, L] are the tokens after it, attention_mask [B, P + L] covers it too."""
        shared = self.critic is None
        output = forward_after_prefix(
            self.policy,
            prefix_ids,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
            output_hidden_states=shared,
        )
        if shared:  # the last hidden states are the final norm's output, what the LM head reads
            return output.logits, self.value_head(output.hidden_states[-1].float()).squeeze(-1)
        hidden = forward_after_prefix(
            self._critic_backbone,
            prefix_ids,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
        ).last_hidden_state
        return output.logits, self._critic_head(hidden).squeeze(-1).float()

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """--gradient_checkpointing for both models (the Trainer calls this)."""
        for module in (self.policy, self.critic):
            if module is not None:
                module.activation_checkpointing_enable(**kwargs)

    # Rollouts are generated in eval mode, where checkpointing is inactive: TRL's unwrap has nothing to toggle.
    is_gradient_checkpointing = False


# The Trainer internals the PPO loop calls, with the parameters it passes: PPO replaces only the inner loop, so these
# are its contract with transformers, checked when a PPOTrainer is built (and pinned by tests/test_ppo.py).
TRAINER_INTERNALS = {
    "_inner_training_loop": ("batch_size", "args", "resume_from_checkpoint", "trial"),
    "_init_training_state": ("max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint"),
    "_prepare_for_training": ("max_steps", "train_dataloader", "resume_from_checkpoint"),
    "_load_rng_state": ("checkpoint",),
    "_finalize_training": ("trial", "num_train_samples", "start_time"),
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "_get_learning_rate": (),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_save": ("output_dir", "state_dict"),
}


def check_trainer_internals(trainer_class: type = Trainer) -> None:
    """Fail clearly, naming the method and the transformers version, when a Trainer internal PPO relies on moved."""
    import inspect

    import transformers

    problems = []
    for name, parameters in TRAINER_INTERNALS.items():
        method = getattr(trainer_class, name, None)
        if method is None:
            problems.append(f"Trainer.{name} is gone")
            continue
        missing = [p for p in parameters if p not in inspect.signature(method).parameters]
        if missing:
            problems.append(f"Trainer.{name} no longer takes {', '.join(missing)}")
    if problems:
        raise RuntimeError(
            f"ppo_training.py runs on Trainer internals that transformers {transformers.__version__} changed: "
            f"{'; '.join(problems)}. Install the pinned version (pip install -c constraints.txt transformers) or "
            "update medgpt/ppo.py (TRAINER_INTERNALS)."
        )


class PPOTrainer(Trainer):
    """PPO on a prompt dataset (`input_ids`, `prompt`, `tools` columns; see medgpt.prompts.tokenize_prompts)."""

    def __init__(
        self,
        policy: nn.Module,
        critic: nn.Module | None,
        ref_policy: nn.Module | None,
        scorer,
        ppo_args: PPOArguments,
        stops: list[str],
        **trainer_kwargs,
    ) -> None:
        check_trainer_internals()
        for module in (policy, critic):
            if module is not None:
                disable_dropout_in_model(module)  # dropout would make rollout and update log-probs disagree
        super().__init__(model=PolicyAndValue(policy, critic), data_collator=self._collate, **trainer_kwargs)
        # None: the policy with its LoRA adapter switched off, or with the frozen REFERENCE_ADAPTER where the policy
        # continues an adapter (--peft_path): the reference is always the policy PPO starts from.
        self.ref_policy = ref_policy
        if ref_policy is not None:
            ref_policy.requires_grad_(False).eval().to(self.args.device)
        self.scorer, self.ppo_args = scorer, ppo_args
        # The template's stops end a rollout as they end a chat answer (medgpt.generation); sampling is on-policy:
        # softmax(logits / temperature) over the whole vocabulary, nothing else (temperature 0 here: no sampling
        # warpers; exact_sampling draws the tokens).
        self.stop_ids, self.stop_strings = stop_tokens(self.processing_class, stops)
        self.generate_kwargs = {
            **generation_kwargs(self.processing_class, stops, ppo_args.response_length, 0.0, 1.0, 1.0),
            **exact_sampling(ppo_args.temperature),
            "use_cache": True,
        }
        self.kl_ctl = ppo_math.AdaptiveKLController(ppo_args.kl_coef, ppo_args.kl_target, ppo_args.kl_horizon)
        self.rollout_size = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        self.rollout_size *= ppo_args.num_mini_batches
        self._metrics: dict[str, list[float]] = {}
        self._shares_prefix: bool | None = None  # shares_prefix(), known on first use

    # ---------------------------------------------------------------- data

    def _collate(self, rows: list[dict]) -> dict:
        input_ids, attention_mask = left_pad([r["input_ids"] for r in rows], self.processing_class.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt": [r["prompt"] for r in rows],
            "tools": [r["tools"] for r in rows],
        }

    def get_train_dataloader(self) -> DataLoader:
        if len(self.train_dataset) < self.rollout_size * self.args.world_size:
            raise UserError(
                f"one rollout batch takes --per_device_train_batch_size {self.args.per_device_train_batch_size} x "
                f"--gradient_accumulation_steps {self.args.gradient_accumulation_steps} x --num_mini_batches "
                f"{self.ppo_args.num_mini_batches} x {self.args.world_size} process(es) = "
                f"{self.rollout_size * self.args.world_size} prompts, but there are only {len(self.train_dataset)}; "
                "lower those flags or add prompts."
            )
        generator = torch.Generator().manual_seed(self.args.seed)
        loader = DataLoader(
            self.train_dataset,
            batch_size=self.rollout_size,
            sampler=torch.utils.data.RandomSampler(self.train_dataset, generator=generator),
            collate_fn=self._collate,
            drop_last=True,
        )
        return self.accelerator.prepare(loader)

    def total_steps(self, batches_per_epoch: int) -> int:
        """Rollout batches to train on: --max_steps, else --total_episodes prompts, else --num_train_epochs."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        if self.ppo_args.total_episodes:
            return max(1, math.ceil(self.ppo_args.total_episodes / (self.rollout_size * self.args.world_size)))
        return max(1, math.ceil(self.args.num_train_epochs * batches_per_epoch))

    # ---------------------------------------------------------------- the loop

    def _inner_training_loop(self, batch_size=None, args=None, resume_from_checkpoint=None, trial=None, **kwargs):
        args = self.args
        dataloader = self.get_train_dataloader()
        batches_per_epoch = len(dataloader)
        max_steps = self.total_steps(batches_per_epoch)
        num_epochs = math.ceil(max_steps / batches_per_epoch)
        self._init_training_state(max_steps, batches_per_epoch, num_epochs, resume_from_checkpoint, trial)
        model, dataloader = self._prepare_for_training(max_steps, dataloader, resume_from_checkpoint)
        if resume_from_checkpoint is not None and Path(resume_from_checkpoint, PPO_STATE).is_file():
            self.kl_ctl.value = json.loads(Path(resume_from_checkpoint, PPO_STATE).read_text())["kl_coef"]
        logger.info(
            "PPO: %d rollout batches of %d prompts per process (%d epochs of %d batches), %d PPO epochs x %d "
            "minibatches each",
            max_steps,
            self.rollout_size,
            num_epochs,
            batches_per_epoch,
            self.ppo_args.num_ppo_epochs,
            self.ppo_args.num_mini_batches,
        )
        start_time = time.time()
        self._initial_global_step = self.state.global_step
        self._tr_loss = torch.tensor(0.0, device=args.device)
        self._total_loss_scalar = 0.0
        model.zero_grad()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        first_epoch, skip = divmod(self.state.global_step, batches_per_epoch)
        for epoch in range(first_epoch, num_epochs):
            if hasattr(dataloader, "set_epoch"):
                dataloader.set_epoch(epoch)
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            for index, batch in enumerate(dataloader):
                if epoch == first_epoch and index < skip:
                    continue  # trained before the checkpoint this run resumed from
                if resume_from_checkpoint is not None:
                    # Only now: opening the data iterator draws random numbers the interrupted run drew earlier.
                    self._load_rng_state(resume_from_checkpoint)
                    resume_from_checkpoint = None
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                metrics = self.ppo_step(model, batch)
                self.lr_scheduler.step()
                self.state.global_step += 1
                self.state.epoch = epoch + (index + 1) / batches_per_epoch
                self._tr_loss += metrics["loss/policy_avg"] + self.ppo_args.vf_coef * metrics["loss/value_avg"]
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                self._log_save_evaluate(model, trial, metrics)
                if self.control.should_training_stop or self.state.global_step >= max_steps:
                    break
            self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
            if self.control.should_training_stop or self.state.global_step >= max_steps:
                break
        self._total_loss_scalar = self._tr_loss.item()
        self._tr_loss.zero_()
        return self._finalize_training(trial, max_steps * self.rollout_size * args.world_size, start_time)

    def _log_save_evaluate(self, model, trial, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._metrics.setdefault(name, []).append(value)
        if self.control.should_log:
            logs = {name: sum(values) / len(values) for name, values in self._metrics.items()}
            self._metrics = {}
            self.log({**logs, "learning_rate": self._get_learning_rate()})
        if self.control.should_evaluate and self.eval_dataset is not None:
            self.evaluate()
        if self.control.should_save:
            self._save_checkpoint(model, trial)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    # ---------------------------------------------------------------- one PPO step

    def ppo_step(self, model, batch: dict) -> dict[str, float]:
        """One rollout batch: generate, score, advantages, update. Returns the step's metrics (TRL's names) and the
        seconds of its phases (time/...)."""
        ppo, device = self.ppo_args, self.args.device
        seconds: dict[str, float] = {}
        started = clock(device)
        # 1. generate
        with timed(seconds, "generate", device):
            queries, query_mask, responses = self.generate(model, batch)
            mask, ended = ppo_math.response_mask(responses, self.stop_ids, self.processing_class.pad_token_id)
            # Past the longest answer no row has a real token: every forward and backward below would pay for them.
            width = ppo_math.answer_width(mask)
            responses, mask = responses[:, :width], mask[:, :width]
        # 2. score, and the log-probs and values of the rollout
        with timed(seconds, "score", device):
            texts, ended_by_string = self.answers(responses, mask)
            ended |= ended_by_string.to(ended.device)
            scores = torch.tensor(self.scorer(batch["prompt"], texts, batch["tools"]), device=responses.device)
            if ppo.missing_eos_penalty is not None:
                scores = scores - ppo.missing_eos_penalty * (~ended).float()
        order = torch.randperm(self.rollout_size, device=responses.device)  # the update's first pass, row by row
        with timed(seconds, "rollout_forward", device):
            (logprobs, values, ref_logprobs, entropy), first = self.rollout_forward(
                model, queries, query_mask, responses, order
            )
        # 3. advantages
        kl = ppo_math.kl_estimate(logprobs, ref_logprobs, ppo.kl_estimator) * mask
        rewards = ppo_math.token_rewards(scores, kl, mask, self.kl_ctl.value)
        if ppo.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ppo_math.gae(rewards, values, mask, ppo.gamma, ppo.lam)
        advantages = ppo_math.masked_whiten(advantages, mask)
        # 4. update
        rollout = {
            "queries": queries,
            "query_mask": query_mask,
            "responses": responses,
            "mask": mask,
            "logprobs": logprobs,
            "values": values,
            "advantages": advantages,
            "returns": returns,
        }
        with timed(seconds, "update", device):
            update_stats = self.update(model, rollout, order, first)

        mean_kl = kl.sum(1).mean()
        generate_seconds = max(seconds["generate"], 1e-6)
        non_score = (-self.kl_ctl.value * kl).sum(1).mean()
        stats = {
            "objective/kl": mean_kl,
            "objective/entropy": (-logprobs * mask).sum(1).mean(),
            "objective/non_score_reward": non_score,
            "objective/rlhf_reward": non_score + scores.mean(),
            "objective/scores": scores.mean(),
            "val/num_eos_tokens": ended.float().sum(),
            "val/response_length": mask.sum(1).float().mean(),
            "policy/entropy_avg": ppo_math.masked_mean(entropy, mask),
            "rollout/tokens_per_second": mask.sum() / generate_seconds,
            # Every row is decoded until this process's longest answer ends: the sampler's speed at equal work, which
            # answer tokens/s is not (it also moves with the samples' mean length).
            "rollout/decoded_tokens_per_second": torch.full((), mask.numel() / generate_seconds, device=device),
            **update_stats,
        }
        averaged = self.accelerator.reduce(torch.stack([v.float() for v in stats.values()]), reduction="mean")
        metrics = dict(zip(stats, averaged.tolist(), strict=True))
        metrics["objective/kl_coef"] = self.kl_ctl.value
        # The longest answer sets the work of the step (every row is decoded and run forward that far).
        longest = self.accelerator.reduce(torch.tensor(float(width), device=device), reduction="max")
        metrics["val/response_length_max"] = longest.item()
        metrics["episode"] = (self.state.global_step + 1) * self.rollout_size * self.args.world_size
        self.kl_ctl.update(metrics["objective/kl"], self.rollout_size * self.args.world_size)
        metrics.update({f"time/{phase}": value for phase, value in seconds.items()})  # this process's own
        metrics["time/step"] = clock(device) - started
        return metrics

    def generate(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(queries [B, Lq] left-padded, their attention mask [B, Lq], responses [B, T <= response_length]
        right-padded, T the longest row generate produced), sampled with the KV cache from softmax(logits /
        temperature) and no other logits processor: exactly the distribution `forward` computes log-probs from."""
        queries = batch["input_ids"].to(self.args.device)
        query_mask = batch["attention_mask"].to(self.args.device)
        with unwrap_model_for_generation(model, self.accelerator) as unwrapped:
            unwrapped.eval()
            with (
                sampling_exactly_as_given(unwrapped.policy),
                lora_merged(unwrapped.policy),
                packed_for_batch(unwrapped.policy, queries.shape[0]),
            ):
                ahead = prefilled_without_padding(unwrapped.policy, queries, query_mask)  # None: a padded prompt pass
                output = unwrapped.policy.generate(
                    input_ids=queries, attention_mask=query_mask, past_key_values=ahead, **self.generate_kwargs
                )
            unwrapped.train()
        return queries, query_mask, output[:, queries.shape[1] :]

    def answers(self, responses: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """The answers as text without their stop string (the reward model's template adds its own), and [B]
        whether a multi-token stop string ended each."""
        texts = self.processing_class.batch_decode(
            [ids[row] for ids, row in zip(responses, mask, strict=True)], skip_special_tokens=True
        )
        ended = torch.tensor([any(stop in text for stop in self.stop_strings) for text in texts], dtype=torch.bool)
        return [cut_at_stop(text, self.stop_strings) for text in texts], ended

    def forward(self, model, queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor):
        """Response-token logits [B, T, V] (scaled by the sampling temperature), values [B, T], and the model inputs
        (prefix_ids or None, the keywords of the rows) for another forward over the same tokens.

        The prompt's mask is the collator's (what `generate` attended to), never one rebuilt from token values: where
        pad is the end-of-turn token (pad = eos), every turn end inside a prompt would be hidden. Every response
        position is attended to, as in `generate`; the response mask cuts what follows the stop token later. The
        beginning all prompts share (a system prompt) runs once where it pays (medgpt.shared_prefix)."""
        prefix_ids, inputs = model_inputs(queries, query_mask, responses, self.shares_prefix())
        # The head runs on the response positions only (and the last prompt position, which predicts the first
        # answer token): the prompt's logits were never used, and the head is a quarter of a small model's forward.
        logits, values = model(**inputs, logits_to_keep=responses.shape[1] + 1, prefix_ids=prefix_ids)
        prompt_width = inputs["input_ids"].shape[1] - responses.shape[1]
        return self.sampling_logits(logits), values[:, prompt_width - 1 : -1], (prefix_ids, inputs)

    def shares_prefix(self) -> bool:
        """Whether the prompts' shared beginning may run once: every model keeps a plain KV cache, and no activation
        checkpointing is on (its layers drop a passed cache, so the rows would lose the prefix)."""
        if self._shares_prefix is None:  # decided at the first forward, once the Trainer has set checkpointing up
            wrapper = self.accelerator.unwrap_model(self.model)
            models = [m for m in (wrapper.policy, wrapper.critic) if m is not None]
            checkpointing = any(getattr(m, "is_activation_checkpointing", False) for m in models)
            plain_caches = all(supports_shared_prefix(m) for m in [*models, self.ref_policy] if m is not None)
            self._shares_prefix = plain_caches and not checkpointing
        return self._shares_prefix

    def sampling_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, T + 1, V] kept from the last prompt position on -> [B, T, V] in float32 over the sampling
        temperature: the distribution each response token was drawn from."""
        return logits[:, :-1].float() / (self.ppo_args.temperature + 1e-7)

    def rollout_forward(self, model, queries, query_mask, responses, order: torch.Tensor):
        """Log-probs of the sampled tokens under the policy and the reference, values and entropies, all [B, T] in row
        order, computed in micro-batches of the rows in `order` (the update's first pass), and the first micro-batch's
        (log-probs [b, T], values [b, T]) with their autograd graphs, or None.

        The update's first micro-batch holds the same rows and sees the same weights (no optimizer step comes
        between), so its forward is this one: it runs once, with gradients, and the update backpropagates through it
        instead of running it again. Not under DeepSpeed, whose engine is left to pair each forward with its backward.
        """
        size = self.args.per_device_train_batch_size
        policy = self.accelerator.unwrap_model(model).policy
        # The update's first micro-batch runs under the no_sync the update would give it.
        last = self.args.gradient_accumulation_steps == 1
        chunks, first = [], None
        for index, rows in enumerate(order.split(size)):
            q, qm, r = queries[rows], query_mask[rows], responses[rows]
            with_graph = index == 0 and not self.is_deepspeed_enabled
            grad = torch.enable_grad() if with_graph else torch.no_grad()
            sync = self.accumulating(model, last) if with_graph else contextlib.nullcontext()
            with grad, sync:
                logits, values, (prefix_ids, inputs) = self.forward(model, q, qm, r)
                logprobs = selective_log_softmax(logits, r)
            if with_graph:
                first = (logprobs, values)
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach())
                with self.reference(policy) as reference:
                    ref_logits = forward_after_prefix(
                        reference, prefix_ids, **inputs, logits_to_keep=r.shape[1] + 1
                    ).logits
                ref_logprobs = selective_log_softmax(self.sampling_logits(ref_logits), r)
                chunks.append((logprobs.detach(), values.detach(), ref_logprobs, entropy))
        in_row_order = torch.argsort(order)
        return tuple(torch.cat(parts)[in_row_order] for parts in zip(*chunks, strict=True)), first

    def accumulating(self, model, last: bool):
        """The context of a micro-batch's forward and backward: gradients are synchronised across processes on the
        last micro-batch of an optimizer step only (DeepSpeed's engine decides that itself)."""
        if last or self.is_deepspeed_enabled:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    @contextlib.contextmanager
    def reference(self, policy: nn.Module):
        """The reference policy (the policy as PPO started), for a no-grad forward inside this block."""
        if self.ref_policy is not None:
            yield self.ref_policy
        elif REFERENCE_ADAPTER in getattr(policy, "peft_config", {}):
            policy.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield policy
            finally:
                policy.set_adapter("default")  # trainable again; the reference adapter stays frozen
        else:
            with policy.disable_adapter():
                yield policy

    def update(self, model, rollout: dict[str, torch.Tensor], order: torch.Tensor, first=None) -> dict:
        """num_ppo_epochs passes over shuffled minibatches; one optimizer step per minibatch. The first pass takes
        the rows in `order`, and its first micro-batch's log-probs and values from `first` where rollout_forward kept
        them (same rows, same weights: the same forward)."""
        args, ppo = self.args, self.ppo_args
        micro, steps = args.per_device_train_batch_size, args.gradient_accumulation_steps
        deepspeed = self.is_deepspeed_enabled
        totals: dict[str, list[torch.Tensor]] = {}
        for epoch in range(ppo.num_ppo_epochs):
            if epoch:
                order = torch.randperm(self.rollout_size, device=rollout["queries"].device)
            for minibatch in order.split(micro * steps):
                for i, rows in enumerate(minibatch.split(micro)):
                    last = i == steps - 1
                    self.accelerator.gradient_state._set_sync_gradients(last)
                    with self.accumulating(model, last):
                        part = {name: value[rows] for name, value in rollout.items()}
                        if first is not None:
                            (logprobs, values), first = first, None
                        else:
                            logits, values, _ = self.forward(
                                model, part["queries"], part["query_mask"], part["responses"]
                            )
                            logprobs = selective_log_softmax(logits, part["responses"])
                        pg_loss, pg_stats = ppo_math.policy_loss(
                            logprobs, part["logprobs"], part["advantages"], part["mask"], ppo.cliprange
                        )
                        vf_loss, vf_clipfrac = ppo_math.value_loss(
                            values, part["values"], part["returns"], part["mask"], ppo.cliprange_value
                        )
                        loss = pg_loss + ppo.vf_coef * vf_loss
                        self.accelerator.backward(loss if deepspeed else loss / steps)
                    for name, value in (
                        ("loss/policy_avg", pg_loss),
                        ("loss/value_avg", vf_loss),
                        ("policy/approxkl_avg", pg_stats["approxkl"]),
                        ("policy/clipfrac_avg", pg_stats["clipfrac"]),
                        ("val/clipfrac_avg", vf_clipfrac),
                        ("val/ratio", pg_stats["ratio"]),
                    ):
                        totals.setdefault(name, []).append(value.detach())
                if args.max_grad_norm and args.max_grad_norm > 0 and not deepspeed:
                    self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                model.zero_grad()
        return {name: torch.stack(values).mean() for name, values in totals.items()}

    # ---------------------------------------------------------------- evaluation and saving

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Mean reward-model score and answer length on the eval prompts, with rollouts sampled as in training."""
        dataset = eval_dataset or self.eval_dataset
        size = self.args.per_device_eval_batch_size
        scores, lengths = [], []
        for start in range(0, len(dataset), size):
            batch = self._collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
            _, _, responses = self.generate(self.model_wrapped, batch)
            mask, _ = ppo_math.response_mask(responses, self.stop_ids, self.processing_class.pad_token_id)
            scores += self.scorer(batch["prompt"], self.answers(responses, mask)[0], batch["tools"])
            lengths += mask.sum(1).tolist()
        metrics = {
            f"{metric_key_prefix}_objective/scores": sum(scores) / len(scores),
            f"{metric_key_prefix}_response_length": sum(lengths) / len(lengths),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint plus the KL coefficient the adaptive controller has reached."""
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
        if self.args.should_save and folder.is_dir():
            Path(folder, PPO_STATE).write_text(json.dumps({"kl_coef": self.kl_ctl.value}))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The policy (adapter or full weights) and tokenizer in output_dir; the critic in output_dir/value_model, or
        a value head on the policy in output_dir/value_head.safetensors."""
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        wrapper = self.accelerator.unwrap_model(self.model)
        state_dict = state_dict if state_dict is not None else wrapper.state_dict()
        modules = [("policy", wrapper.policy, Path(output_dir))]
        if wrapper.critic is None:
            head = {k: v.contiguous() for k, v in state_dict.items() if k.startswith("value_head.")}
            save_file(head, Path(output_dir, VALUE_HEAD_FILE))
        else:
            modules.append(("critic", wrapper.critic, Path(output_dir, VALUE_MODEL_DIR)))
        for name, module, folder in modules:
            own = {k[len(name) + 1 :]: v for k, v in state_dict.items() if k.startswith(f"{name}.")}
            # Only the trained adapter: a --peft_path policy also holds its frozen starting copy (the reference).
            adapters = {"selected_adapters": ["default"]} if hasattr(module, "peft_config") else {}
            module.save_pretrained(folder, state_dict=own, safe_serialization=True, **adapters)
        self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from peft import PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        wrapper = self.accelerator.unwrap_model(model or self.model)
        modules = [(wrapper.policy, Path(resume_from_checkpoint))]
        if wrapper.critic is None:
            head = load_file(Path(resume_from_checkpoint, VALUE_HEAD_FILE))
            wrapper.value_head.load_state_dict({k.removeprefix("value_head."): v for k, v in head.items()})
        else:
            modules.append((wrapper.critic, Path(resume_from_checkpoint, VALUE_MODEL_DIR)))
        for module, folder in modules:
            if isinstance(module, PeftModel):
                set_peft_model_state_dict(module, load_file(folder / "adapter_model.safetensors"))
            elif (folder / "model.safetensors").is_file():
                module.load_state_dict(load_file(folder / "model.safetensors"), strict=False)  # tied weights absent
            else:
                load_sharded_checkpoint(module, folder, strict=False)
