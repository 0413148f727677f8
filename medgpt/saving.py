"""What every stage leaves in output_dir: weights or adapter, tokenizer with its chat_template, the template name,
trainer state, metrics, TensorBoard events (via report_to) and a PNG of the loss curves."""

import errno
import logging
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path

from transformers import Trainer

from medgpt import atomic
from medgpt.chat import save_template
from medgpt.errors import Interrupted, UserError
from medgpt.faults import FaultGuard

logger = logging.getLogger(__name__)

STAGING_DIR = ".saving"  # the final model is written here first, then moved into output_dir (atomic.publish)
# Each PNG and the logged values it draws (label -> log key); a PNG is written when any of its keys was logged.
PLOTS = {
    "training_loss.png": ("loss", {"train loss": "loss", "eval loss": "eval_loss"}),
    "training_reward.png": (
        "reward",
        {
            "reward model score (PPO)": "objective/scores",
            "score - KL penalty (PPO)": "objective/rlhf_reward",
            "eval score (PPO)": "eval_objective/scores",
            "mean reward (GRPO)": "reward",
        },
    ),
}


def plot_curves(log_history: list[dict], output_dir: str | Path) -> list[Path]:
    """Loss (and, for RL stages, reward) curves against the global step, as PNGs in output_dir (see PLOTS)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    written = []
    for file_name, (quantity, keys) in PLOTS.items():
        curves = {
            label: [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
            for label, key in keys.items()
        }
        if not any(curves.values()):
            continue
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for label, points in curves.items():
            if points:
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        axes.set_xlabel("step")
        axes.set_ylabel(quantity)
        axes.set_title(f"{quantity.capitalize()} curves: {Path(output_dir).name}")
        axes.grid(alpha=0.3)
        axes.legend()
        path = Path(output_dir, file_name)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def save_outputs(
    trainer: Trainer, template=None, tool_format: str | None = None, train_metrics: dict | None = None
) -> None:
    """Save after training: the model and tokenizer atomically (atomic.publish), then state, metrics and curves.
    save_model runs on every rank (ZeRO-3 gathers the weights collectively); the rest is the main process's."""
    output_dir = Path(trainer.args.output_dir)
    staging = output_dir / STAGING_DIR  # one name for every rank: ZeRO-3 ranks write into the same folder
    main = trainer.is_world_process_zero()
    try:
        if main:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(staging))  # adapter or full weights, plus the tokenizer (processing_class)
        if main and template is not None:
            save_template(staging, template.name, tool_format)
        trainer.accelerator.wait_for_everyone()
        if main:
            atomic.publish(staging, output_dir)
    except OSError as err:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise _disk_error(err, output_dir, "the final model") from None
    if not main:
        return
    if train_metrics is not None:
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    for path in plot_curves(trainer.state.log_history, output_dir):
        logger.info("curves: %s", path)
    logger.info("saved to %s", output_dir)


def _disk_error(err: OSError, output_dir: Path, what: str) -> OSError | UserError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"the disk is full: saving {what} to --output_dir {output_dir} failed ({err.strerror}). Nothing "
            "half-written was left as a model. Free some space (or pass a --output_dir on another disk, or fewer "
            "checkpoints with --save_total_limit), then rerun with --resume_from_checkpoint True to continue from the "
            "last complete checkpoint."
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(
            f"cannot write {what} to --output_dir {output_dir}: {err.strerror}. Choose a writable folder."
        )
    return err


def checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders in output_dir, oldest first."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[11:]))


def check_output_dir(training_args, output_args) -> None:
    """Before anything runs (each training script's main calls it): --output_dir must be a writable folder, and a
    training run must not silently start from scratch over an earlier run's checkpoints or saved model."""
    output_dir, resume = training_args.output_dir, training_args.resume_from_checkpoint
    overwrite, training = output_args.overwrite_output_dir, training_args.do_train
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a folder; pass a folder path.")
    existing = next((p for p in [path, *path.parents] if p.is_dir()), Path.cwd())
    try:  # a real write, not os.access: root passes permission checks, yet read-only mounts and /proc refuse
        descriptor, probe = tempfile.mkstemp(prefix=".medgpt-write-test-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        raise UserError(
            f"--output_dir {output_dir} is not writable ({existing}: {err.strerror}); pass a folder you can write to."
        ) from None
    if not training or overwrite or resume not in (None, "", False, "False", "false") or not path.is_dir():
        return
    earlier = [p.name for p in checkpoints(path)] + [
        n for n in (*atomic.MARKERS, "trainer_state.json") if (path / n).exists()
    ]
    if earlier:
        shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise UserError(
            f"--output_dir {output_dir} already holds an earlier run ({shown}). To continue it, add "
            "--resume_from_checkpoint True; to start over and replace it, add --overwrite_output_dir True; or pass a "
            "new --output_dir."
        )


def clear_earlier_run(output_dir: str | Path) -> None:
    """A run that starts from scratch removes an earlier run's checkpoints (a later --resume_from_checkpoint True
    would pick them up) and the files that make its saved model look finished. check_output_dir only lets a run get
    here over an earlier one with --overwrite_output_dir True."""
    for folder in checkpoints(output_dir):
        logger.warning("--overwrite_output_dir: removing %s of an earlier run", folder)
        shutil.rmtree(folder)
    for name in (*atomic.MARKERS, "trainer_state.json"):
        Path(output_dir, name).unlink(missing_ok=True)


def resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """The checkpoint --resume_from_checkpoint names. True: the newest complete checkpoint-N folder in output_dir
    (the Trainer writes trainer_state.json last, so a folder without it was cut short by a kill and is skipped with
    a warning). A path must be a complete checkpoint. None/False: start from the beginning."""
    if value in (None, "", False, "False", "false"):
        return None
    if value in (True, "True", "true"):
        for folder in reversed(checkpoints(output_dir)):
            if Path(folder, "trainer_state.json").is_file():
                logger.info("resuming from %s", folder)
                return str(folder)
            logger.warning("skipping %s: incomplete (no trainer_state.json; the run stopped while writing it)", folder)
        raise UserError(
            f"--resume_from_checkpoint True: {output_dir} holds no complete checkpoint-N folder to resume from; drop "
            "the flag to start from the beginning, or pass the path of a checkpoint folder."
        )
    if not Path(value, "trainer_state.json").is_file():
        raise UserError(
            f"--resume_from_checkpoint {value}: not a complete checkpoint (no trainer_state.json there); pass a "
            "checkpoint-N folder written by a training run, or True for the newest one in --output_dir."
        )
    return str(value)


def train_and_evaluate(
    trainer: Trainer, template=None, tool_format: str | None = None, perplexity: bool = False
) -> Trainer:
    """How every stage ends: train (resuming when --resume_from_checkpoint says so) and save everything, then
    evaluate when there is an eval split and --do_eval asks for it. A stop signal ends training after the step
    with a checkpoint (`Interrupted`); weights that become NaN/inf end it without one (UserError); in both cases no
    final model is written, so nothing unfinished looks finished."""
    if trainer.args.do_train:
        checkpoint = resume_checkpoint(trainer.args.resume_from_checkpoint, trainer.args.output_dir)
        if checkpoint is None and trainer.is_world_process_zero():
            clear_earlier_run(trainer.args.output_dir)
        guard = FaultGuard()
        trainer.add_callback(guard)
        try:
            result = trainer.train(resume_from_checkpoint=checkpoint)
        except OSError as err:
            raise _disk_error(err, Path(trainer.args.output_dir), "a checkpoint") from None
        finally:
            guard.restore_handlers()
        if guard.nonfinite_step is not None:
            raise UserError(_diverged_message(trainer, guard))
        if guard.signal_number is not None:
            raise Interrupted(_interrupted_message(trainer, guard), 128 + guard.signal_number)
        save_outputs(trainer, template, tool_format, result.metrics)
    if trainer.eval_dataset is not None and trainer.args.do_eval:
        evaluate(trainer, perplexity)
    return trainer


def _last_checkpoint(output_dir: str) -> str:
    complete = [p for p in checkpoints(output_dir) if (p / "trainer_state.json").is_file()]
    return str(complete[-1]) if complete else "none"


def _interrupted_message(trainer: Trainer, guard: FaultGuard) -> str:
    name = signal.Signals(guard.signal_number).name
    return (
        f"{name}: training stopped after step {trainer.state.global_step} and saved "
        f"{_last_checkpoint(trainer.args.output_dir)}. No final model was written. To continue, rerun the same "
        "command with --resume_from_checkpoint True."
    )


def _diverged_message(trainer: Trainer, guard: FaultGuard) -> str:
    args = trainer.args
    precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "float32"
    return (
        f"training stopped at step {guard.nonfinite_step}: {guard.nonfinite_what} (the run diverged). Nothing was "
        f"saved after it; the last good checkpoint is {_last_checkpoint(args.output_dir)}. Try a lower "
        f"--learning_rate (now {args.learning_rate:g}), more --warmup_steps, or --max_grad_norm 1.0 (now "
        f"{args.max_grad_norm:g}); with {precision} training, bf16 (--bf16 True) or float32 is more robust than fp16. "
        "Then resume from the checkpoint with --resume_from_checkpoint True or start over with "
        "--overwrite_output_dir True."
    )


def evaluate(trainer: Trainer, perplexity: bool = False) -> dict:
    """Evaluate and save eval metrics; for language-model losses also perplexity = exp(eval_loss)."""
    from transformers.integrations import TensorBoardCallback
    from transformers.integrations.integration_utils import default_logdir

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            # Without a training run first, the callback would fall back to ./runs in the working directory.
            callback.logging_dir = str(Path(trainer.args.output_dir, default_logdir()))
    metrics = trainer.evaluate()
    if perplexity and "eval_loss" in metrics:
        metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf")
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics
