"""Summarise a run_pipeline.sh run: per stage the training signal at start and end, a held-out check before and after,
whether it shows learning, and its wall time; held-out perplexity and multiple-choice accuracy per model; the base
and final models' answers side by side. Printed, and written to DEMO_DIR/summary.md.

    python tools/demo_summary.py --demo_dir outputs/demo
"""

from dataclasses import dataclass, field
from pathlib import Path

from medgpt import args
from medgpt.atomic import write_text
from medgpt.errors import UserError, run_cli
from medgpt.evaluation.demo_summary import Run, summary


@dataclass
class SummaryArguments:
    demo_dir: str = field(default="outputs/demo", metadata={"help": "The DEMO_OUTPUT folder of run_pipeline.sh."})


def main(argv: list[str] | None = None) -> str:
    (summary_args,) = args.parse((SummaryArguments,), argv)
    run = Run(Path(summary_args.demo_dir))
    if not run.stages:
        raise UserError(f"--demo_dir {summary_args.demo_dir} holds no run_pipeline.sh run (no stages.txt).")
    text = summary(run)
    write_text(run.folder / "summary.md", text)
    print(text)
    print(f"written to {run.folder / 'summary.md'}")
    return text


if __name__ == "__main__":
    run_cli(main)
