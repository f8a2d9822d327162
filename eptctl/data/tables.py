"""User data: CSV, TSV, JSON Lines and Parquet files, a folder of split files, or a hub dataset, read with ``datasets``.

``datasets`` is imported here only, and only when such data is read: importing it costs over a second.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eptctl.core.errors import EptctlError
from eptctl.data import text
from eptctl.data.rows import RawRow

FORMAT_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# ``datasets`` decompresses these by itself; the format comes from the suffix before them.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
SPLIT_COLUMN = "split"
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
UNTYPED_FORMATS = ("csv", "tsv")  # every cell is text in the file; the reader infers numbers
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    fmt = FORMAT_BY_SUFFIX.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise EptctlError(
            f"unsupported file type: {path.name}",
            hint=f"use one of {', '.join(FORMAT_BY_SUFFIX)} (optionally compressed: {', '.join(COMPRESSION_SUFFIXES)})",
        )
    return fmt


def split_files(folder: Path) -> dict[str, Path]:
    """The split files in a folder: ``train.csv``, ``validation.jsonl`` (or ``dev``, ``val``...), ``test.parquet``."""
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        split = SPLIT_NAMES.get(file.name.split(".")[0].lower())
        if split is None or not file.is_file():
            continue
        if split in found:
            raise EptctlError(
                f"{folder} holds two {split} files: {found[split].name} and {file.name}", hint="keep one of them"
            )
        file_format(file)
        found[split] = file
    if "train" not in found:
        raise EptctlError(
            f"no train file in folder {folder}",
            hint="name the files train.csv, validation.csv and test.csv (or .jsonl, .parquet)",
        )
    return found


def locate(path: str | Path, *, hub: bool = False) -> dict:
    """The source dict for ``path``: a local file or folder (checked now), or a hub dataset when asked for."""
    local = Path(path).expanduser()
    if local.exists():
        if local.is_dir():
            split_files(local)
            return {"kind": "file", "path": str(local.resolve()), "format": "folder"}
        return {"kind": "file", "path": str(local.resolve()), "format": file_format(local)}
    if hub:
        if not _HUB_NAME.fullmatch(str(path)):
            raise EptctlError(f"'{path}' is not a hub dataset name", hint="hub datasets are named owner/name")
        return {"kind": "hub", "name": str(path)}
    hint = "check the path"
    if _HUB_NAME.fullmatch(str(path)):
        hint += f"; to load the hub dataset '{path}' instead, ask for the hub explicitly (hub=True, --hub)"
    raise EptctlError(f"file not found: {path}", hint=hint)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """``datasets`` without its progress bars and error logs: eptctl reports failures itself, once."""
    import datasets

    bars_were_off = datasets.are_progress_bars_disabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def _root_cause(err: BaseException) -> str:
    """The innermost error's message: ``datasets`` wraps a parser's useful one in a generic build error."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return _first_line(err)


def _offline() -> bool:
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes", "on") for var in OFFLINE_VARIABLES)


def _has_no_rows(file: Path, fmt: str) -> bool:
    """Only asked after a read failed: tells an empty file (or a lone header) from a broken one."""
    if fmt == "parquet" or file.suffix.lower() in COMPRESSION_SUFFIXES:
        return file.stat().st_size == 0
    with file.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines <= (0 if fmt == "json" else 1)


def _check_text_file(file: Path, fmt: str) -> dict[str, list] | None:
    """What ``datasets`` would get wrong or report badly: bytes that are not UTF-8 (named by line), and a column
    named twice (pandas renames the second ``label`` to ``label.1`` and training would silently use the first).
    Returns the columns of a column-wise JSON file (see :func:`_columnwise`), None for any other file."""
    if fmt == "parquet" or file.suffix.lower() in COMPRESSION_SUFFIXES:
        return None
    data = file.read_bytes()
    content = text.decode(data, str(file))
    if fmt in ("csv", "tsv"):
        header = next(csv.reader(io.StringIO(content), delimiter="\t" if fmt == "tsv" else ","), [])
        seen: set[str] = set()
        for name in (h.strip() for h in header):
            if name in seen:
                raise EptctlError(f"column '{name}' appears twice in the header of {file}",
                                  hint="rename or drop one of the two columns")
            seen.add(name)
        return None
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as dup:
            raise EptctlError(f"key '{dup.key}' appears twice in line {number} of {file}",
                              hint="keep one value per key") from None
        except ValueError:
            break  # not JSON Lines: one JSON document (maybe column-wise), or broken
    return _columnwise(content, file)


def _columnwise(content: str, file: Path) -> dict[str, list] | None:
    """The columns of a column-wise JSON file, one object whose every value is a list (``{"text": ["a", "b"],
    "label": [...]}``), to be read as rows; None for rows (one object per line, or an array of objects) and for what
    does not parse (``datasets`` reads it or reports the error). Lists of different lengths are an ``EptctlError``:
    ``datasets`` would read the object as one row of lists."""
    try:
        doc = json.loads(content, object_pairs_hook=_unique_keys)
    except _DuplicateKey as dup:
        raise EptctlError(f"key '{dup.key}' appears twice in {file}", hint="keep one value per key") from None
    except ValueError:
        return None
    if not isinstance(doc, dict) or not doc or not all(isinstance(v, list) for v in doc.values()):
        return None
    lengths = {key: len(values) for key, values in doc.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{key} {n}" for key, n in lengths.items())
        raise EptctlError(f"{file} is column-wise JSON (an object of lists) with lists of different lengths ({shown})",
                          hint="give every column one value per row, or write one JSON object per line")
    return doc


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(key)
    return dict(pairs)


def _read_file(datasets, file: Path):
    fmt = file_format(file)
    columns = _check_text_file(file, fmt)
    if columns is not None:
        try:
            return datasets.Dataset.from_dict(columns)
        except Exception as err:  # noqa: BLE001  (pyarrow raises several types for a column of mixed values)
            raise EptctlError(f"could not read the columns of {file}: {_root_cause(err)}",
                              hint="give each column values of one type (strings for text)") from err
    options: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        # Keep "NA", "null", "None" as text: they are words in a corpus, not missing values.
        options = {"keep_default_na": False, "sep": "\t" if fmt == "tsv" else ","}
    try:
        return datasets.load_dataset(
            "csv" if fmt == "tsv" else fmt, data_files=str(file), split="train", **options
        )
    except Exception as err:  # noqa: BLE001  (datasets, pandas and pyarrow raise a dozen types for a bad file)
        if _has_no_rows(file, fmt):
            raise EptctlError(f"{file} is empty", hint="add rows: a header line and one row per example") from None
        raise EptctlError(f"could not read {file}: {_root_cause(err)}", hint=f"check that it is valid {fmt}") from err


def _read_hub(datasets, name: str) -> dict[str, Any]:
    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # noqa: BLE001  (network, auth and builder errors all end here)
        if _offline():
            hint = f"offline mode is on ({' or '.join(OFFLINE_VARIABLES)}): unset it where the network allows"
        else:
            hint = "check the dataset name and network access to the hub"
        raise EptctlError(f"could not load hub dataset '{name}': {_first_line(err)}", hint=hint) from err
    # Hub datasets carry extra splits (e.g. "unsupervised"); only the three known ones are used.
    return {SPLIT_NAMES[key]: ds for key, ds in loaded.items() if key in SPLIT_NAMES}


def load_hub_config(name: str, config: str, splits: tuple[str, ...]) -> dict[str, Any]:
    """The ``datasets.Dataset`` of each of ``splits`` of hub dataset ``name`` (config ``config``): an explicit
    download. ``EptctlError`` with the reason when offline, unreachable or missing."""
    with _quiet_datasets() as datasets:
        try:
            loaded = datasets.load_dataset(name, config)
        except Exception as err:  # noqa: BLE001  (network, auth and builder errors all end here)
            if _offline():
                hint = f"offline mode is on ({' or '.join(OFFLINE_VARIABLES)}): unset it where the network allows"
            else:
                hint = "this needs network access to huggingface.co; elsewhere, copy the files over"
            raise EptctlError(f"could not fetch {name} ({config}) from the hub: {_first_line(err)}",
                              hint=hint) from err
    missing = [s for s in splits if s not in loaded]
    if missing:
        raise EptctlError(f"hub dataset {name} ({config}) has no split {', '.join(missing)}",
                          hint=f"its splits: {', '.join(loaded)}")
    return {s: loaded[s] for s in splits}


def read_tables(source: dict) -> tuple[dict[str, Any], bool]:
    """The ``datasets.Dataset`` per split and whether the splits come from the data layout (folder, hub)."""
    with _quiet_datasets() as datasets:
        if source["kind"] == "hub":
            return _read_hub(datasets, source["name"]), True
        path = Path(source["path"])
        if not path.exists():
            raise EptctlError(f"file not found: {path}", hint="the task's data file moved or was deleted")
        if path.is_dir():
            return {split: _read_file(datasets, file) for split, file in split_files(path).items()}, True
        return {"all": _read_file(datasets, path)}, False


def read_split_files(files: list[Path], columns: list[str], where: str, label_column: str | None = None
                     ) -> list[dict]:
    """The rows of one split stored as one file or as shards (parquet, JSON Lines), as dicts of ``columns`` (and
    ``label_column``). ClassLabel columns (hub parquet) give label names; a missing column is an ``EptctlError``
    naming it."""
    fmt = file_format(files[0])
    with _quiet_datasets() as datasets:
        if len(files) == 1:
            table = _read_file(datasets, files[0])
        else:
            try:
                table = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")
            except Exception as err:  # noqa: BLE001  (as in _read_file)
                raise EptctlError(f"could not read {where}: {_root_cause(err)}",
                                  hint=f"check that the shards are valid {fmt}") from err
        values = {column: _as_text(_column_values(table, column, "input", where), fmt in UNTYPED_FORMATS)
                  for column in columns}
        if label_column is not None:
            values[label_column] = _column_values(table, label_column, "label", where)
    return [dict(zip(values, row)) for row in zip(*values.values())]


def _column_values(table, column: str, role: str, where: str) -> list:
    if column not in table.column_names:
        raise EptctlError(
            f"{role} column '{column}' not found in {where}",
            hint=f"available columns: {', '.join(table.column_names)}",
        )
    values = table[column][:]  # a whole-column slice: iterating a datasets Column decodes row by row, 100x slower
    # A ClassLabel column stores integers; the names are the labels. -1 marks an unlabelled row.
    names = getattr(table.features[column], "names", None)
    if names is not None:
        values = [names[v] if v is not None and 0 <= v < len(names) else None for v in values]
    return values


def _untyped_splits(source: dict) -> set[str]:
    """The splits of ``source`` read from CSV or TSV, whose cells are all text in the file."""
    if source["kind"] != "file":
        return set()
    path = Path(source["path"])
    files = split_files(path) if path.is_dir() else {"all": path}
    return {split for split, file in files.items() if file_format(file) in UNTYPED_FORMATS}


def _as_text(values: list, untyped: bool) -> list:
    """An input column's values; from an untyped format (CSV, TSV), the numbers and booleans pandas inferred from the
    file's text are text again. Typed formats keep their values: a number there is refused as text later
    (``text.cell``), as a likely wrong column."""
    if not untyped:
        return values
    return [v if v is None or isinstance(v, str) or (isinstance(v, float) and v != v) else str(v) for v in values]


def describe(source: dict) -> str:
    """Where a file or hub source's data lives, for messages."""
    return source.get("path") or f"hub dataset {source.get('name')}"


def read_rows(
    source: dict, *, text_column: str, text_pair_column: str | None, label_column: str | None,
    label_role: str = "label", extra_columns: tuple[str, ...] = (),
) -> dict[str, list[RawRow]]:
    """Raw rows per split (``train``/``validation``/``test``, or ``all`` when the data names no split).
    ``label_role`` names the label column in errors ("label", or "target" for generation and regression);
    ``extra_columns`` are further named input columns, read into each row's ``fields``."""
    tables, layout_splits = read_tables(source)
    where_base = describe(source)
    untyped = _untyped_splits(source)
    rows: dict[str, list[RawRow]] = {}
    for split, table in tables.items():
        where = where_base if split == "all" else f"{where_base} ({split})"

        def inputs(column: str, role: str) -> list:
            return _as_text(_column_values(table, column, role, where), split in untyped)

        texts = inputs(text_column, "text")
        pairs = inputs(text_pair_column, "text pair") if text_pair_column else [None] * len(texts)
        labels = _column_values(table, label_column, label_role, where) if label_column else [None] * len(texts)
        extra = [[(column, value) for value in inputs(column, "input")] for column in extra_columns]
        fields = list(zip(*extra)) if extra else [()] * len(texts)
        rows[split] = [RawRow(*values, row, tuple(f))
                       for row, (*values, f) in enumerate(zip(texts, pairs, labels, fields), start=1)]
        if split == "all" and not layout_splits and SPLIT_COLUMN in table.column_names:
            return _by_split_column(rows.pop("all"), table[SPLIT_COLUMN][:], where)
    return rows


def _by_split_column(rows: list[RawRow], marks: list, where: str) -> dict[str, list[RawRow]]:
    grouped: dict[str, list[RawRow]] = {}
    for raw, mark in zip(rows, marks):
        split = SPLIT_NAMES.get(str(mark).strip().lower())
        if split is None:
            raise EptctlError(
                f"row {raw.row} of {where} names an unknown split '{mark}' in column '{SPLIT_COLUMN}'",
                hint="use train, validation (or dev) and test",
            )
        grouped.setdefault(split, []).append(raw)
    return grouped
