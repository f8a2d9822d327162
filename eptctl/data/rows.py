"""Raw rows (text, pair, label value as found in the data) and how they become :class:`Example` s."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from eptctl.core.errors import EptctlError
from eptctl.data.spec import Example
from eptctl.data.text import clean as _clean_text

_INTEGER = re.compile(r"-?\d+")


class RawRow(NamedTuple):
    text: Any
    text_pair: Any
    label: Any
    row: int  # 1-based position in its file or split, for error messages
    fields: tuple = ()  # (column, value) of a task's further named input columns, in order


def canonical_label(value: Any) -> str | None:
    """The label as a name: ints and integral floats (pandas turns an int column with gaps into floats) as digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    name = str(value).strip()
    return name or None


def infer_label_names(values: Iterable[Any]) -> tuple[str, ...]:
    """Sorted distinct label names; numeric names sort as numbers so "10" comes after "9"."""
    names = {name for name in map(canonical_label, values) if name is not None}
    if names and all(_INTEGER.fullmatch(name) for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def readable(label: str) -> str:
    """A label name as answer text: ``very_positive`` reads ``very positive``."""
    return " ".join(label.replace("_", " ").split())


def _label_index(labels: Sequence[str]):
    by_name = {name: index for index, name in enumerate(labels)}
    names_are_numbers = all(_INTEGER.fullmatch(name) for name in labels)

    def index_of(name: str) -> int | None:
        if name in by_name:
            return by_name[name]
        # Integer labels against named classes (0/1 data, labels ("neg", "pos")) are positions in the label set.
        if not names_are_numbers and _INTEGER.fullmatch(name) and 0 <= int(name) < len(labels):
            return int(name)
        return None

    return index_of


def checked_fields(rows: Sequence[RawRow], *, where: str) -> list[tuple[tuple[str, str], ...]]:
    """Each row's further named columns, stripped; an empty one is an error naming the column and the row."""
    out = []
    for raw in rows:
        cleaned = []
        for column, value in raw.fields:
            value = _clean_text(value)
            if value is None:
                raise EptctlError(f"row {raw.row} of {where} has empty text in column '{column}'",
                                  hint="fill in or drop that row")
            cleaned.append((column, value))
        out.append(tuple(cleaned))
    return out


def checked_texts(
    rows: Sequence[RawRow], *, where: str, text_column: str = "text", text_pair_column: str | None = None
) -> list[tuple[str, str | None]]:
    """(text, text_pair) per row, stripped; an empty text (or pair, when there is a pair column) is an error."""
    if not rows:
        raise EptctlError(f"{where} has no rows", hint="check the file, or the split it names")
    texts = []
    for raw in rows:
        text = _clean_text(raw.text)
        if text is None:
            _raise_empty(rows, "text", text_column, where)
        pair = None
        if text_pair_column is not None:
            pair = _clean_text(raw.text_pair)
            if pair is None:
                _raise_empty(rows, "text_pair", text_pair_column, where)
        texts.append((text, pair))
    return texts


def to_examples(
    rows: Sequence[RawRow], labels: Sequence[str], *, where: str, text_column: str = "text",
    text_pair_column: str | None = None, label_column: str = "label", task_type: str = "classification",
) -> list[Example]:
    """Validates every row, then maps label values onto ``labels`` (classification), or reads each row's target
    text (generation) or number (regression) from ``label_column``; one ``EptctlError`` names the first bad row."""
    texts = checked_texts(rows, where=where, text_column=text_column, text_pair_column=text_pair_column)
    extra = checked_fields(rows, where=where)
    if task_type == "generation":
        return [Example(text=text, label=0, text_pair=pair, target=_target_text(raw, where, label_column), fields=f)
                for raw, (text, pair), f in zip(rows, texts, extra)]
    if task_type == "regression":
        return [Example(text=text, label=0, text_pair=pair, value=target_number(raw, where, label_column), fields=f)
                for raw, (text, pair), f in zip(rows, texts, extra)]
    index_of = _label_index(labels)
    examples = []
    for raw, (text, pair), f in zip(rows, texts, extra):
        name = canonical_label(raw.label)
        if name is None:
            raise EptctlError(
                f"row {raw.row} of {where} has no label in column '{label_column}'",
                hint="fill in or drop rows without a label",
            )
        index = index_of(name)
        if index is None:
            raise EptctlError(
                f"label '{name}' (row {raw.row} of {where}) is not in the task's label set: {', '.join(labels)}",
                hint="a task keeps the labels it was created with; create a new task for a different label set",
            )
        examples.append(Example(text=text, label=index, text_pair=pair, fields=f))
    return examples


def _target_text(raw: RawRow, where: str, column: str) -> str:
    target = _clean_text(raw.label)
    if target is None:
        raise EptctlError(f"row {raw.row} of {where} has an empty target in column '{column}'",
                          hint="fill in or drop rows without a target, or name the column with --target-column")
    return target


def target_number(raw: RawRow, where: str, column: str) -> float:
    """A regression row's target as a finite float; ``EptctlError`` naming the row for an empty or non-numeric one."""
    value = raw.label
    if isinstance(value, bool):  # True/False would pass float(); they are not scores
        value = str(value)
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        number = math.nan
    if value is None or not math.isfinite(number):
        shown = "" if value is None or (isinstance(value, float) and math.isnan(value)) else f" {str(value)[:40]!r}"
        raise EptctlError(f"row {raw.row} of {where}: the target{shown} in column '{column}' is not a number",
                          hint="a regression target is a number such as 3.2; fix or drop that row")
    return number


def _raise_empty(rows: Sequence[RawRow], field: str, column: str, where: str):
    empty = [raw.row for raw in rows if _clean_text(getattr(raw, field)) is None]
    raise EptctlError(
        f"{len(empty)} row(s) of {where} have empty text in column '{column}' (first: row {empty[0]})",
        hint="fill in or drop those rows",
    )
