"""Reward functions on degenerate 50,000-character completions: the slowest call per input, in milliseconds.

Every rule reward must read any completion in linear time: one sampled completion that made a regex backtrack
would stall every rank of a GRPO run. Target: every call under 50 ms. Prints a table; asserts nothing.

    python benchmarks/reward_speed.py              # median of 5 calls per reward and input
    python benchmarks/reward_speed.py --repeat 1 --json outputs/benchmarks/reward_speed.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from medgpt.rewards import RewardSettings, build_reward_funcs

OPTIONS = json.dumps({"A": "aspirin", "B": "ibuprofen", "C": "paracetamol", "D": "morphine"})
# About 50,000 characters each: the shapes that make naive answer parsers backtrack or rescan.
DEGENERATE = {
    "letters": "A " * 25_000 + "1",
    "marked letters": "A. " * 16_700,
    "lower letters": "a " * 25_000,
    "one word": "a" * 50_000,
    "negations": "不是阿司匹林" * 8_400,
    "unclosed answers": "<answer>" * 6_250,
    "tags": "<think></think><answer>" * 2_200,
    "separators": "A, " * 16_700,
    "boxed": "\\boxed{" * 7_200,
    "numbers": "1." * 25_000,
    "list": "aspirin, " * 5_600,
    "chinese": "患者发热三天" * 8_400,
}
ROWS = (("A", OPTIONS), ("aspirin", None), ("第2肋间隙，距前正中线4寸", None))


def time_rewards(repeat: int) -> dict[str, dict[str, float]]:
    """{input name: {reward name: median milliseconds of its slowest row}}."""
    rewards = build_reward_funcs(["choice_accuracy", "medical_accuracy", "format"], RewardSettings())
    figures: dict[str, dict[str, float]] = {}
    for name, text in DEGENERATE.items():
        for reward in rewards:
            worst = []
            for _ in range(repeat):
                times = []
                for reference, options in ROWS:
                    started = time.perf_counter()
                    reward(prompts=["q"], completions=[text], answer=[reference], options=[options])
                    times.append(1000 * (time.perf_counter() - started))
                worst.append(max(times))
            figures.setdefault(name, {})[reward.__name__] = statistics.median(worst)
    return figures


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=None, help="Also write the figures here")
    args = parser.parse_args(argv)
    figures = time_rewards(args.repeat)
    names = list(next(iter(figures.values())))
    print(f"| input ({len(DEGENERATE['letters']):,} chars) | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for text_name, row in figures.items():
        print(f"| {text_name} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    slowest = max(ms for row in figures.values() for ms in row.values())
    print(f"slowest call: {slowest:.1f} ms (target: under 50 ms)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
