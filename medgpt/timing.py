"""Wall-clock seconds of the phases of an RL step, logged as `time/<phase>` by PPO (medgpt.ppo) and GRPO
(grpo_training.py) so TensorBoard shows where a step's time goes.

    seconds = {}
    with timed(seconds, "generate", device):
        ...
    # seconds == {"generate": 1.7}; a second block with the same phase adds to it

The clock waits for the accelerator's queued work before it is read: kernels run asynchronously, so without the wait
a phase that only launches work would look free and the next phase to read a result would pay for it.
"""

import contextlib
import time
from collections.abc import Iterator

import torch


def clock(device: torch.device) -> float:
    """time.perf_counter() once the device has finished the work queued so far."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def timed(seconds: dict[str, float], phase: str, device: torch.device) -> Iterator[None]:
    """Adds the block's wall-clock seconds to seconds[phase]."""
    started = clock(device)
    yield
    seconds[phase] = seconds.get(phase, 0.0) + clock(device) - started
