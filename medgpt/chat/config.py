"""The chat format a model was trained with, saved beside its weights or adapter (template_config.json), so that
merge, inference, serving and evaluation need no --template_name."""

import json
from pathlib import Path

TEMPLATE_FILE = "template_config.json"


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
