"""The table of evaluation sections, in the order they run and are reported. A new section is one module (its
flags, computation and headline; see medgpt/evaluation/section.py) and one row here, or `register(SECTION)` from
your own code before evaluate_model.main runs."""

from medgpt.evaluation import chat, judging, mcq, preference, prompts, triage
from medgpt.evaluation.section import Section

SECTIONS: dict[str, Section] = {
    section.name: section
    for section in (chat.SECTION, mcq.SECTION, preference.SECTION, prompts.SECTION, triage.SECTION, judging.SECTION)
}


def register(section: Section) -> Section:
    """Add a section (its name and its file flag must be new)."""
    taken = {s.file_flag for s in SECTIONS.values()}
    if section.name in SECTIONS or section.file_flag in taken:
        raise ValueError(f"an evaluation section named {section.name!r} or reading --{section.file_flag} exists")
    SECTIONS[section.name] = section
    return section


def section_arguments() -> tuple[type, ...]:
    """The flag dataclasses of every section, for the command line."""
    return tuple(section.arguments for section in SECTIONS.values())
