"""The printed table and the JSON file of an evaluation; each section supplies its own headline figures."""

import json
from pathlib import Path

from medgpt import atomic
from medgpt.evaluation.sections import SECTIONS


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(section, figure, value) for the printed table."""
    return [
        (name, figure, value)
        for name, section in SECTIONS.items()
        if name in results
        for figure, value in section.headline(results[name])
    ]


def format_table(results: dict) -> str:
    """The figures as a markdown table."""
    lines = ["| section | figure | value |", "|---|---|---|"]
    lines += [f"| {section} | {name} | {value} |" for section, name, value in table_rows(results)]
    if judge := results.get("judge_model"):  # failed requests are left out of the figures: a rerun asks them again
        asked = f"{judge['requests']} sent, {judge['cached']} from the cache, {len(judge['failed'])} failed"
        lines.append(f"| judge model | {judge['model']} | {asked} |")
    return "\n".join(lines)


def write_json(path: str | Path, results: dict) -> Path:
    """Write the results atomically (medgpt.atomic)."""
    return atomic.write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
