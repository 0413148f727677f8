"""Flag tables in docs/*.md, generated from the argument dataclasses of the stage scripts.

    python tools/flag_docs.py            # rewrite the tables in every page of PAGES
    python tools/flag_docs.py --check    # change nothing; exit 1 and name the pages whose tables are stale

A script's block sits between `<!-- flags:SCRIPT -->` and `<!-- /flags -->` in its page: one table per dataclass of
the project that the script parses (flag, type, default, help), then one line naming the library config whose flags
also apply (TrainingArguments, a TRL config), with a link to its documentation and the defaults the script changes
(its DEFAULTS). Everything outside the markers is prose and is left alone. The dataclasses and defaults are those
of the script's `args.parse(TYPES, argv, DEFAULTS)` call (its main() is run up to that call, which is recorded; no
model is loaded), plus what args.parse adds, so a script needs no registration beyond its row in PAGES.

To document another script, add a row to PAGES (and, for a library config not met before, one to LIBRARY_DOCS in
medgpt/flag_tables.py), then run this tool: a page without the script's markers gets a "## Flags" section at its
end, which can be moved.
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from unittest import mock

from medgpt.flag_tables import FIX, DocsError, ScriptArgs, Seen, parser_types, render_page

ROOT = Path(__file__).resolve().parents[1]

# script -> the page holding its flag block. Scripts sharing a page get their blocks in the page's order.
PAGES = {
    "pretraining.py": "docs/pretraining.md",
    "supervised_finetuning.py": "docs/sft.md",
    "reward_modeling.py": "docs/preference.md",
    "dpo_training.py": "docs/preference.md",
    "orpo_training.py": "docs/preference.md",
    "ppo_training.py": "docs/rl.md",
    "grpo_training.py": "docs/rl.md",
    "opd_training.py": "docs/distillation.md",
    "merge_peft_adapter.py": "docs/merge_and_inference.md",
    "inference.py": "docs/merge_and_inference.md",
    "openai_api.py": "docs/serving.md",
    "gradio_demo.py": "docs/serving.md",
    "chatpdf.py": "docs/knowledge.md",
    "evaluate_model.py": "docs/evaluation.md",
    "tools/convert_dataset.py": "docs/data_tools.md",
    "tools/validate_jsonl.py": "docs/data_tools.md",
    "tools/dedup.py": "docs/data_tools.md",
    "tools/check_contamination.py": "docs/data_tools.md",
    "tools/scan_phi.py": "docs/data_tools.md",
    "tools/generate_dialogues.py": "docs/data_tools.md",
    "tools/model_quant.py": "docs/export.md",
    "tools/eval_quantize.py": "docs/export.md",
    "tools/export_gguf.py": "docs/export.md",
    "tools/lm_eval_task.py": "docs/evaluation.md",
    "tools/build_domain_tokenizer.py": "docs/vocabulary.md",
    "tools/merge_tokenizers.py": "docs/vocabulary.md",
}


def script_args(script: str) -> ScriptArgs:
    """Import the script and run its main() up to its args.parse(TYPES, argv, DEFAULTS) call, which is recorded."""
    from medgpt import args

    name = Path(script).with_suffix("").as_posix().replace("/", ".")
    module = sys.modules.get(name)
    if module is None:  # loaded from its file: the scripts are no package, and sys.path stays as it is
        spec = importlib.util.spec_from_file_location(name, ROOT / script)
        module = sys.modules[name] = importlib.util.module_from_spec(spec)  # inspect finds its source there
        spec.loader.exec_module(module)
    calls: list[tuple[tuple[type, ...], dict]] = []

    def recording_parse(arg_types, argv=None, defaults=None):
        calls.append((tuple(arg_types), dict(defaults or {})))
        raise Seen

    with mock.patch.object(args, "parse", recording_parse):
        try:
            module.main([])
        except Seen:
            pass
    if len(calls) != 1:
        raise DocsError(f"{script}: main() does not start with one medgpt.args.parse(TYPES, argv, DEFAULTS) call.")
    arg_types, defaults = calls[0]
    return ScriptArgs(script, parser_types(arg_types, defaults), defaults)


def pages(root: Path = ROOT) -> dict[Path, str]:
    """Every page of PAGES with its tables regenerated: path -> new text."""
    by_page: dict[str, list[ScriptArgs]] = {}
    for script, page in PAGES.items():
        by_page.setdefault(page, []).append(script_args(script))
    result = {}
    for page, specs in by_page.items():
        path = root / page
        if not path.is_file():
            raise DocsError(f"{page} does not exist; PAGES maps {', '.join(s.script for s in specs)} to it.")
        result[path] = render_page(path.read_text(encoding="utf-8"), specs, page, ROOT)
    return result


def stale_pages(root: Path = ROOT) -> list[str]:
    """The pages whose flag tables differ from what the dataclasses say now."""
    return [
        path.relative_to(root).as_posix()
        for path, text in pages(root).items()
        if path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page is stale")
    options = parser.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        if options.check:
            stale = stale_pages()
            for page in stale:
                print(f"stale flag tables: {page}")
            if stale:
                print(f"regenerate them with: {FIX}")
            return 1 if stale else 0
        for path, text in pages().items():
            if path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"rewrote {path.relative_to(ROOT).as_posix()}")
        return 0
    except DocsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
