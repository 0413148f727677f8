"""What every stage leaves in output_dir: weights or adapter, tokenizer with its chat_template, the template name,
trainer state, metrics, TensorBoard events (via report_to) and a PNG of the loss curves."""

import json
import logging
import math
from pathlib import Path

from transformers import Trainer

from medgpt.errors import UserError

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "template_config.json"
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


def save_template(output_dir: str | Path, template_name: str, tool_format: str | None = None) -> None:
    """Record which template the model was trained with, so merge and inference need no --template_name."""
    record = {"template_name": template_name, "tool_format": tool_format}
    Path(output_dir, TEMPLATE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_template_name(model_dir: str | Path) -> tuple[str | None, str | None]:
    file = Path(model_dir, TEMPLATE_FILE)
    if not file.is_file():
        return None, None
    record = json.loads(file.read_text())
    return record.get("template_name"), record.get("tool_format")


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
    """Save after training. save_model runs on every rank (ZeRO-3 gathers the weights collectively); the rest
    is written by the main process only."""
    output_dir = trainer.args.output_dir
    trainer.save_model(output_dir)  # adapter or full weights, plus the tokenizer (processing_class)
    if not trainer.is_world_process_zero():
        return
    if template is not None:
        save_template(output_dir, template.name, tool_format)
    if train_metrics is not None:
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    for path in plot_curves(trainer.state.log_history, output_dir):
        logger.info("curves: %s", path)
    logger.info("saved to %s", output_dir)


def resume_checkpoint(value: str | bool | None, output_dir: str | Path) -> str | None:
    """The checkpoint --resume_from_checkpoint names. True: the newest complete checkpoint-N folder in output_dir
    (the Trainer writes trainer_state.json last, so a folder without it was cut short by a kill and is skipped with
    a warning). A path must be a complete checkpoint. None/False: start from the beginning."""
    if value in (None, "", False, "False", "false"):
        return None
    if value in (True, "True", "true"):
        folders = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
        for folder in sorted(folders, key=lambda p: int(p.name[11:]), reverse=True):
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
) -> None:
    """How every stage ends: train (resuming when --resume_from_checkpoint says so) and save everything, then
    evaluate when there is an eval split and --do_eval asks for it."""
    if trainer.args.do_train:
        checkpoint = resume_checkpoint(trainer.args.resume_from_checkpoint, trainer.args.output_dir)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        save_outputs(trainer, template, tool_format, result.metrics)
    if trainer.eval_dataset is not None and trainer.args.do_eval:
        evaluate(trainer, perplexity)


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
