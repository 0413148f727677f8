"""Reading training data: local folders or `datasets` names, row validation, the datasets cache and splits.

Every row is checked while it is read (medgpt.formats). A bad row stops the run with a message naming file, line
and field, or, with --skip_bad_rows, is skipped and counted in a summary. Rows with nothing to learn (a question
without any answer) are always skipped and counted.
"""

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError

from medgpt import __version__
from medgpt.args import DataArguments, check_eval_split, wants_eval
from medgpt.errors import UserError
from medgpt.formats import NORMALIZERS, ReadReport, RowError, normalize_prompt_row

logger = logging.getLogger(__name__)

Kind = Literal["chat", "text", "preference", "prompt"]
EXTENSIONS = {
    "chat": (".jsonl", ".json"),
    "text": (".txt", ".jsonl", ".json"),
    "preference": (".jsonl", ".json"),
    "prompt": (".jsonl", ".json"),
}


# ---------------------------------------------------------------- reading files


def find_files(folder: str, kind: Kind, flag: str) -> list[Path]:
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in EXTENSIONS[kind])
    if not files:
        raise UserError(f"--{flag} {folder} holds no {'/'.join(EXTENSIONS[kind])} files.")
    return files


def _not_text(row: dict) -> RowError | None:
    """Bytes that are not UTF-8 (read as lone surrogates) and escaped halves of UTF-16 surrogate pairs ("\\ud800")
    are not text: Arrow and the tokenizers cannot take them."""
    for value in row.values():
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return RowError(
                None,
                f"not UTF-8 text: {err.object[err.start]!r} is a byte that is not UTF-8 or half of a UTF-16 surrogate "
                "pair; save the file as UTF-8",
            )
    return None


def file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for .jsonl, .json (a list of rows) and .txt (one document per line). Bytes that are
    not UTF-8 are read as lone surrogates, and the row holding them is refused after normalization (_not_text)."""
    if path.suffix == ".txt":
        with path.open(encoding="utf-8", errors="surrogateescape") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
        return
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno}).") from None
            except RecursionError:
                raise UserError(f"{path}: invalid JSON (nested too deeply to read).") from None
            for index, row in enumerate(rows):
                yield index + 1, row  # rows of a JSON array are numbered from 1 ("row N")
            return
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                row = RowError(None, f"invalid JSON ({err.msg} at column {err.colno})")
            except RecursionError:
                row = RowError(None, "invalid JSON (nested too deeply to read)")
            yield number, row


def numbered_rows(
    name: str,
    rows: Iterator[tuple[int, Any]],
    kind: Kind,
    skip_bad_rows: bool,
    keep_linebreaks: bool,
    report: ReadReport,
) -> Iterator[tuple[int, Any, dict]]:
    """(line number, row as read, normalized row) for every good row of one source, as training reads it.

    A bad row stops with `name:line: problem` (or, with skip_bad_rows, is counted in `report` and left out); an
    empty source is an error. The data tools (tools/*.py) read through this too, so they accept what training does.
    """
    normalize = NORMALIZERS[kind]
    count, skipped_before = 0, sum(report.skipped.values())
    for number, row in rows:
        try:
            if isinstance(row, RowError):
                raise row
            if kind == "text" and isinstance(row, str):
                row = row if keep_linebreaks else row.rstrip("\r\n")
            normalized = normalize(row, report)
            if normalized is None:
                report.skipped["conversation without any answer"] += 1
                continue
            if error := _not_text(normalized):
                raise error
            yield number, row, normalized
            count += 1
        except RowError as err:
            if not skip_bad_rows:
                raise UserError(
                    f"{name}:{number}: {err}. Fix the row, or pass --skip_bad_rows to skip bad rows and count them."
                ) from None
            report.skipped["invalid JSON" if str(err).startswith("invalid JSON") else str(err).split(":")[0]] += 1
            if len(report.examples) < report.example_limit:
                report.examples.append(f"{name}:{number}: {err}")
    report.rows += count
    if count == 0 and sum(report.skipped.values()) == skipped_before:
        raise UserError(f"{name}: no rows found (empty file). Remove it or add data.")


def read_rows(
    sources: list[tuple[str, Iterator[tuple[int, Any]]]],
    kind: Kind,
    skip_bad_rows: bool,
    keep_linebreaks: bool,
    report: ReadReport,
) -> Iterator[dict]:
    for name, rows in sources:
        for _, _, normalized in numbered_rows(name, rows, kind, skip_bad_rows, keep_linebreaks, report):
            yield normalized


def _rows_from_files(
    files: list[tuple[str, int, int]], reading: dict, report: ReadReport, version: str
) -> Iterator[dict]:
    # (path, size, mtime) identify the files so the datasets cache is invalidated when one changes; `reading` holds
    # read_rows' settings (kind, skip_bad_rows, keep_linebreaks), `version` the toolkit's, for the cache too.
    yield from read_rows([(path, file_rows(Path(path))) for path, _, _ in files], report=report, **reading)


def _rows_from_dataset(dataset: Dataset, name: str, reading: dict, report: ReadReport, version: str) -> Iterator[dict]:
    yield from read_rows([(name, enumerate(dataset, 1))], report=report, **reading)


def _build(generator: Callable, gen_kwargs: dict, what: str, cache_dir: str | None) -> Dataset:
    """Validated rows as an Arrow dataset in the datasets cache (so tokenization results are cached too)."""
    report = ReadReport()
    try:
        dataset = Dataset.from_generator(
            generator, gen_kwargs={**gen_kwargs, "report": report, "version": __version__}, cache_dir=cache_dir
        )
    except DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        if report.rows == 0:  # every row skipped: datasets cannot infer a schema from nothing
            report.log(what)
            raise UserError(f"{what}: every row was skipped or empty; nothing left to train on.") from None
        raise
    except ValueError as err:  # no row at all: datasets cannot infer a schema
        if report.rows == 0:
            report.log(what)
            raise UserError(f"{what}: every row was skipped or empty; nothing left to train on.") from None
        raise err
    # The summary is kept beside the cached rows, so a run that reads them from the cache still shows it.
    summary = Path(dataset.cache_files[0]["filename"] + ".summary.json") if dataset.cache_files else None
    if report.rows or report.skipped:
        report.log(what)
        if summary is not None:
            summary.write_text(json.dumps(report.to_json()))
    else:
        logger.info("%s: %d rows (validated earlier, read from the datasets cache)", what, len(dataset))
        if summary is not None and summary.is_file():
            ReadReport.from_json(json.loads(summary.read_text())).log(f"{what} (when first read)")
    return dataset


def load_split(
    files: list[Path],
    kind: Kind,
    data_args: DataArguments,
    keep_linebreaks: bool,
    what: str,
    cache_dir: str | None = None,
) -> Dataset:
    stamped = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    reading = {"kind": kind, "skip_bad_rows": data_args.skip_bad_rows, "keep_linebreaks": keep_linebreaks}
    return _build(_rows_from_files, {"files": stamped, "reading": reading}, what, cache_dir)


def load_hub_split(
    dataset: Dataset,
    name: str,
    kind: Kind,
    data_args: DataArguments,
    keep_linebreaks: bool,
    cache_dir: str | None = None,
) -> Dataset:
    reading = {"kind": kind, "skip_bad_rows": data_args.skip_bad_rows, "keep_linebreaks": keep_linebreaks}
    return _build(_rows_from_dataset, {"dataset": dataset, "name": name, "reading": reading}, name, cache_dir)


def load_datasets(
    data_args: DataArguments, kind: Kind, seed: int = 42, keep_linebreaks: bool = True, cache_dir: str | None = None
) -> DatasetDict:
    """Train (and, when available, validation) splits of normalized rows.

    Without validation files, `validation_split_percentage` of the training rows (shuffled with `seed`) are held
    out; the eval split is never empty when it is asked for and there are at least two rows.
    """
    splits: dict[str, Dataset] = {}
    for split, flag in (("train", "train_file_dir"), ("validation", "validation_file_dir")):
        if getattr(data_args, flag):
            files = find_files(getattr(data_args, flag), kind, flag)
            splits[split] = load_split(files, kind, data_args, keep_linebreaks, split, cache_dir)
    if data_args.dataset_name:
        hub = _load_named_dataset(data_args, cache_dir)
        for split_name, split in hub.items():
            target = "validation" if split_name in ("validation", "valid", "dev") else split_name
            if target in ("train", "validation") and target not in splits:
                splits[target] = load_hub_split(
                    split, f"{data_args.dataset_name}[{split_name}]", kind, data_args, keep_linebreaks, cache_dir
                )
    if not splits:
        raise UserError("no data found: pass --train_file_dir DIR, --validation_file_dir DIR or --dataset_name NAME.")
    if "train" in splits and "validation" not in splits and data_args.validation_split_percentage > 0:
        train = splits["train"]
        n_eval = max(1, int(len(train) * data_args.validation_split_percentage / 100))
        if len(train) >= 2:
            parts = train.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
            splits["train"], splits["validation"] = parts["train"], parts["test"]
        else:
            logger.warning("only %d training row: no validation split held out", len(train))
    return DatasetDict(splits)


def prepare_splits(
    raw: DatasetDict,
    data_args: DataArguments,
    training_args,
    prepare: Callable[[Dataset, str], Dataset],
    empty_train: str,
    cap_rows: bool = True,
) -> dict[str, Dataset]:
    """Train and eval splits ready for a trainer, the same way for every stage.

    Each split is shuffled with the seed and capped at --max_train_samples / --max_eval_samples, then given to
    `prepare(rows, split_name)` (tokenize, render, pack). With `cap_rows=False` the rows stay in order and the cap
    counts what `prepare` made (pre-training blocks, as in MedicalGPT). The eval split is only prepared when
    evaluation is wanted. One rule for emptiness: no training row left is an error ending with `empty_train` (the
    fix); an empty eval split is left out with a warning, and a run that evaluates during training without any eval
    split stops before training.
    """
    splits: dict[str, Dataset] = {}
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        limit = None if limit is not None and limit < 0 else limit  # MedicalGPT's -1: every row
        if name not in raw or (name == "validation" and not wants_eval(training_args)):
            continue
        rows = cap(raw[name].shuffle(seed=training_args.seed), limit) if cap_rows else raw[name]
        prepared = prepare(rows, name)
        if not cap_rows:
            prepared = cap(prepared, limit)
        if len(prepared) == 0:
            if name == "train":
                raise UserError(f"no training data left: {empty_train}")
            logger.warning("the eval split is empty after preparation; evaluation is skipped")
            continue
        splits[name] = prepared
    check_eval_split(training_args, splits.get("validation"))
    return splits


def _load_named_dataset(data_args: DataArguments, cache_dir: str | None) -> DatasetDict:
    name = data_args.dataset_name
    try:
        if Path(name).is_dir() and any(Path(name, f).exists() for f in ("dataset_dict.json", "state.json")):
            loaded = load_from_disk(name)
        else:
            loaded = load_dataset(name, data_args.dataset_config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise UserError(
            f"--dataset_name {name}: could not load it ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Use a local folder with --train_file_dir, or check the name and your network/HF_DATASETS_OFFLINE."
        ) from None
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def read_prompt_file(path: str, flag: str) -> list[list[dict]]:
    """Conversations to answer: a .txt line is one question; a .jsonl row is messages/conversations (answered
    after its last user turn) or a single prompt field."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--{flag} {path}: file not found.")
    conversations = []
    for number, row in file_rows(file):  # read as training reads files, so the line numbers agree
        try:
            if isinstance(row, RowError):
                raise row
            if file.suffix == ".txt":
                normalized = {"prompt": json.dumps([{"role": "user", "content": row.strip()}], ensure_ascii=False)}
            else:
                normalized = normalize_prompt_row(row)
            if error := _not_text(normalized):
                raise error
            conversations.append(json.loads(normalized["prompt"]))
        except RowError as err:
            raise UserError(f"{path}:{number}: {err}.") from None
    if not conversations:
        raise UserError(f"--{flag} {path} holds no prompts.")
    return conversations


def cap(dataset: Dataset | None, limit: int | None) -> Dataset | None:
    if dataset is None or limit is None or limit >= len(dataset):
        return dataset
    return dataset.select(range(limit))
