"""Raw rows (text, pair, label value as found in the data) and how they become :class:`Example` s."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from eptctl.core.errors import EptctlError
from eptctl.data.spec import Example
from eptctl.data.task_types import DEFAULT_TASK_TYPE, task_type as _task_type
from eptctl.data.task_types.classification import INTEGER as _INTEGER
from eptctl.data.task_types.classification import canonical_label
from eptctl.data.task_types.regression import target_number
from eptctl.data.text import cell as _cell
from eptctl.data.text import clean as _clean_text

__all__ = ["RawRow", "canonical_label", "checked_fields", "checked_texts", "infer_label_names", "readable",
           "target_number", "to_examples"]


class RawRow(NamedTuple):
    text: Any
    text_pair: Any
    label: Any
    row: int  # 1-based position in its file or split, for error messages
    fields: tuple = ()  # (column, value) of a task's further named input columns, in order


def infer_label_names(values: Iterable[Any]) -> tuple[str, ...]:
    """Sorted distinct label names; numeric names sort as numbers so "10" comes after "9"."""
    names = {name for name in map(canonical_label, values) if name is not None}
    if names and all(_INTEGER.fullmatch(name) for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def readable(label: str) -> str:
    """A label name as answer text: ``very_positive`` reads ``very positive``."""
    return " ".join(label.replace("_", " ").split())


def checked_fields(rows: Sequence[RawRow], *, where: str) -> list[tuple[tuple[str, str], ...]]:
    """Each row's further named columns, stripped; an empty one, or one that is not text, is an error naming the
    column and the row."""
    out = []
    for raw in rows:
        cleaned = []
        for column, value in raw.fields:
            value = _cell(value, _place(raw, column, where))
            if value is None:
                raise EptctlError(f"row {raw.row} of {where} has empty text in column '{column}'",
                                  hint="fill in or drop that row")
            cleaned.append((column, value))
        out.append(tuple(cleaned))
    return out


def checked_texts(
    rows: Sequence[RawRow], *, where: str, text_column: str = "text", text_pair_column: str | None = None
) -> list[tuple[str, str | None]]:
    """(text, text_pair) per row, stripped; an empty text (or pair, when there is a pair column) is an error, and so
    is a value that is not a string (a list or an object read from JSON, a JSON number), naming the row and column."""
    if not rows:
        raise EptctlError(f"{where} has no rows", hint="check the file, or the split it names")
    texts = []
    for raw in rows:
        text = _cell(raw.text, _place(raw, text_column, where))
        if text is None:
            _raise_empty(rows, "text", text_column, where)
        pair = None
        if text_pair_column is not None:
            pair = _cell(raw.text_pair, _place(raw, text_pair_column, where))
            if pair is None:
                _raise_empty(rows, "text_pair", text_pair_column, where)
        texts.append((text, pair))
    return texts


def to_examples(
    rows: Sequence[RawRow], labels: Sequence[str], *, where: str, text_column: str = "text",
    text_pair_column: str | None = None, label_column: str = "label", task_type: str = DEFAULT_TASK_TYPE,
) -> list[Example]:
    """Validates every row, then reads each row's answer from ``label_column`` as its task type reads it (a label
    value mapped onto ``labels``, a target text, a number); one ``EptctlError`` names the first bad row."""
    texts = checked_texts(rows, where=where, text_column=text_column, text_pair_column=text_pair_column)
    extra = checked_fields(rows, where=where)
    answers = _task_type(task_type).read_answers(rows, labels, where, label_column)
    return [Example(text=text, text_pair=pair, fields=f, **answer)
            for (text, pair), f, answer in zip(texts, extra, answers)]


def _place(raw: RawRow, column: str, where: str) -> str:
    return f"row {raw.row} of {where}: column '{column}'"


def _raise_empty(rows: Sequence[RawRow], field: str, column: str, where: str):
    empty = [raw.row for raw in rows if _clean_text(getattr(raw, field)) is None]
    raise EptctlError(
        f"{len(empty)} row(s) of {where} have empty text in column '{column}' (first: row {empty[0]})",
        hint="fill in or drop those rows",
    )
