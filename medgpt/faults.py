"""Stopping a training run cleanly: Ctrl-C / SIGTERM end the run after the current step with a checkpoint, and
weights that turn NaN or inf end it without one, so the last checkpoint on disk is the last good one.

`FaultGuard` is a Trainer callback; `saving.train_and_evaluate` adds it to every stage's trainer (the Trainer loop,
TRL's trainers and our PPO loop all call `on_step_end` and honour `should_save` / `should_training_stop`).
"""

import logging
import math
import signal
import threading

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def nonfinite_parameters(model: torch.nn.Module) -> bool:
    """True when any trainable parameter holds a NaN or inf (one reduction per device, one host sync)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.numel():
            by_device.setdefault(parameter.device, []).append(parameter.detach())
    flags = [
        (~torch.isfinite(torch.stack(torch._foreach_norm(tensors)).float())).any().cpu()
        for tensors in by_device.values()
    ]
    return bool(torch.stack(flags).any()) if flags else False


def _any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """The flags OR-ed over all processes, so every rank stops at the same step (else collectives would hang)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


class FaultGuard(TrainerCallback):
    """Turns a stop signal into "checkpoint after this step, then stop", and non-finite weights or a non-finite
    logged loss into "stop now, save nothing". After training, `signal_number` / `nonfinite_step` say which."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self.nonfinite_step: int | None = None
        self.nonfinite_what = ""
        self._previous: dict[int, object] = {}

    # ------------------------------------------------------------ signals

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._on_signal)

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handlers()

    def restore_handlers(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _on_signal(self, number: int, frame) -> None:
        if self.signal_number is not None:  # a second Ctrl-C: the user does not want to wait for the checkpoint
            self.restore_handlers()
            raise KeyboardInterrupt
        self.signal_number = number
        logger.warning(
            "%s received: finishing this step, then saving a checkpoint and stopping (send it again to quit at once, "
            "without a checkpoint)",
            signal.Signals(number).name,
        )

    # ------------------------------------------------------------ each step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        broken = model is not None and nonfinite_parameters(model)
        stop, broken = _any_rank([self.signal_number is not None, broken], args.device)
        if broken:
            self._diverged(state.global_step, "the weights became NaN or inf", control)
        elif stop:
            if self.signal_number is None:  # another rank got the signal
                self.signal_number = signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                self._diverged(state.global_step, f"the training loss is {value}", control)
        return control

    def _diverged(self, step: int, what: str, control) -> None:
        if self.nonfinite_step is None:
            self.nonfinite_step, self.nonfinite_what = step, what
        control.should_save = False  # the last checkpoint on disk stays the last good one
        control.should_training_stop = True
