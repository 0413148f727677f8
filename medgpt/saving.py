"""What every stage leaves in output_dir: weights or adapter, tokenizer with its chat_template, the template name,
trainer state, metrics, TensorBoard events (via report_to) and a PNG of the loss curves."""

import json
import logging
import math
from pathlib import Path

from transformers import Trainer

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "template_config.json"
LOSS_PLOT = "training_loss.png"


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


def plot_loss(log_history: list[dict], output_dir: str | Path) -> Path | None:
    """Training (and eval) loss against the global step, as output_dir/training_loss.png."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    curves = {
        "train": [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e],
        "eval": [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e],
    }
    if not curves["train"] and not curves["eval"]:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, marker="o" if len(points) < 30 else None, markersize=3, label=f"{label} loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(f"Loss curves: {Path(output_dir).name}")
    axes.grid(alpha=0.3)
    axes.legend()
    path = Path(output_dir, LOSS_PLOT)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


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
    if plot_loss(trainer.state.log_history, output_dir):
        logger.info("loss curves: %s", Path(output_dir, LOSS_PLOT))
    logger.info("saved to %s", output_dir)


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
