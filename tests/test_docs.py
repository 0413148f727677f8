"""Docs: the flag tables match the argument dataclasses; every relative link in README.md and docs/*.md resolves."""

import dataclasses
import importlib
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from medgpt import flag_tables
from tools import flag_docs

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def test_flag_tables_match_the_dataclasses():
    stale = flag_docs.stale_pages()
    assert not stale, (
        f"the flag tables in {', '.join(stale)} no longer match the argument dataclasses: run "
        f"`{flag_docs.FIX}` and commit the pages"
    )


def test_a_changed_dataclass_makes_its_page_stale(monkeypatch):
    import supervised_finetuning

    packing = next(f for f in dataclasses.fields(supervised_finetuning.SFTArguments) if f.name == "packing")
    monkeypatch.setattr(packing, "metadata", {"help": "A help text the page does not have."})
    assert flag_docs.stale_pages() == ["docs/sft.md"]


def test_check_names_a_hand_edited_page_and_write_fixes_it(tmp_path):
    for page in set(flag_docs.PAGES.values()):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    sft = tmp_path / "docs/sft.md"
    text = sft.read_text(encoding="utf-8")
    assert "| `--model_max_length` | int | `512` |" in text
    sft.write_text(text.replace("| `--model_max_length` | int | `512` |", "| `--model_max_length` | int | `1024` |"))
    assert flag_docs.stale_pages(tmp_path) == ["docs/sft.md"]
    for path, new_text in flag_docs.pages(tmp_path).items():
        path.write_text(new_text, encoding="utf-8")
    assert flag_docs.stale_pages(tmp_path) == []
    assert sft.read_text(encoding="utf-8") == text


def test_a_new_row_appends_a_flags_section(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/new.md").write_text("# A new page\n\nProse.\n", encoding="utf-8")
    monkeypatch.setattr(flag_docs, "PAGES", {"merge_peft_adapter.py": "docs/new.md"})
    (text,) = flag_docs.pages(tmp_path).values()
    assert text.startswith("# A new page\n\nProse.\n\n## Flags\n\n<!-- flags:merge_peft_adapter.py -->")
    assert "| `--lora_model` | str | required |" in text and text.endswith("<!-- /flags -->\n")


@pytest.mark.parametrize("script", sorted(flag_docs.PAGES))
def test_documented_flags_are_the_scripts_flags(script, capsys):
    """Every flag in the tables is one the script's --help lists (the tables come from the parser's own types)."""
    spec = flag_docs.script_args(script)
    documented = {f"--{f.name}" for cls in spec.own for f in dataclasses.fields(cls) if f.init}
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    with pytest.raises(SystemExit):
        module.main(["--help"])
    listed = set(re.findall(r"--\w+", capsys.readouterr().out))
    assert documented and documented <= listed, sorted(documented - listed)


def test_heading_anchors_follow_github():
    text = "# Title\n## Tools and `--tool_format`\n```\n# not a heading\n```\n## `inference.py`\n## Title\n"
    assert flag_tables.heading_anchors(text) == ["title", "tools-and---tool_format", "inferencepy", "title-1"]


def links(text: str) -> list[str]:
    """Link targets outside code blocks and inline code."""
    targets, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            targets += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return targets


def test_relative_links_point_to_existing_files_and_anchors():
    problems = []
    for page in MARKDOWN:
        for target in links(page.read_text(encoding="utf-8")):
            if re.match(r"[a-zA-Z][a-zA-Z+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / unquote(path)).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not file.exists():
                problems.append(f"{where} names a missing file")
            elif anchor and file.suffix == ".md":
                if anchor not in flag_tables.heading_anchors(file.read_text(encoding="utf-8")):
                    problems.append(f"{where} names a heading {file.name} does not have")
    assert not problems, "\n".join(problems)
