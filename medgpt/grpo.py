"""TRL's GRPOTrainer as grpo_training.py runs it: rollouts sampled from exactly the settings TRL passes, and the
seconds of each step's phases logged beside TRL's own metrics (time/generate, time/score, time/rollout_forward,
time/update, time/step; medgpt.timing)."""

import torch
from trl import GRPOTrainer

from medgpt.generation import sampling_exactly_as_given
from medgpt.timing import clock, timed

PHASES = ("generate", "score", "rollout_forward", "update", "step")


class OnPolicyGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer, with rollouts sampled from exactly the settings TRL passes: nothing from the checkpoint's
    generation_config.json (a repetition penalty, top-k, an n-gram ban) reshapes the distribution. Each optimizer step
    logs the seconds of its phases, timed around the TRL methods that run them: time/generate, time/score (the reward
    functions), time/rollout_forward (the rollout's no-grad reference and old-policy log-probs), time/update (the
    loss's forward and backward) and time/step (the training step, generation included, the optimizer's step not)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._seconds: dict[str, float] = {}
        self._update_started = 0.0

    def _phase(self, name: str):
        return timed(self._seconds, name, self.accelerator.device)

    def _generate_single_turn(self, *args, **kwargs):
        with sampling_exactly_as_given(self.accelerator.unwrap_model(self.model)):
            return super()._generate_single_turn(*args, **kwargs)

    def _generate(self, *args, **kwargs):
        with self._phase("generate"):
            return super()._generate(*args, **kwargs)

    def _calculate_rewards(self, *args, **kwargs):
        with self._phase("score"):
            return super()._calculate_rewards(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if torch.is_grad_enabled():  # the loss's own forward: part of the update
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        with self._phase("rollout_forward"):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def compute_loss(self, *args, **kwargs):
        self._update_started = clock(self.accelerator.device)
        return super().compute_loss(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch):
        # TRL's own rule for its step_time: an optimizer step's micro-batches are counted by self._step.
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._seconds = {}  # a new optimizer step (evaluation's rollouts since the last one are no part of it)
        with self._phase("step"):
            loss = super().training_step(model, inputs, num_items_in_batch)
            update = clock(self.accelerator.device) - self._update_started  # compute_loss to the backward's end
        self._seconds["update"] = self._seconds.get("update", 0.0) + update
        if self._step % self.current_gradient_accumulation_steps == 0:
            for phase in PHASES:  # a step that reuses buffered rollouts (num_iterations > 1) generated in 0 s
                self._metrics["train"][f"time/{phase}"].append(self._seconds.get(phase, 0.0))
        return loss
