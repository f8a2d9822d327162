"""What a task is (:class:`TaskSpec`), one labelled input (:class:`Example`) and a loaded task (:class:`TaskData`)."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field, fields

from eptctl.core.errors import EptctlError
from eptctl.data.task_types import DEFAULT_TASK_TYPE
from eptctl.data.task_types import TASK_TYPES as _TABLE
from eptctl.data.task_types import TaskType, names
from eptctl.data.task_types.regression import DEFAULT_GRID

SPLITS = ("train", "validation", "test")
# The task types' names and default metrics, for callers of earlier versions (the table is data.task_types).
TASK_TYPES = names()
DEFAULT_METRIC = {name: kind.default_metric for name, kind in _TABLE.items()}
TEMPLATE_FIELDS = ("text", "text_pair")
# Bumped when the meaning of a stored spec changes, so a newer eptctl can still read an older registry row.
SPEC_SCHEMA_VERSION = 1


def template_fields(template: str) -> set[str]:
    """The ``{placeholders}`` a template uses; a malformed template is a user error, not a ValueError."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise EptctlError(
            f"template {template!r} is malformed: {err}", hint="write literal braces as {{ and }}"
        ) from None


def template_columns(template: str) -> tuple[str, ...]:
    """The template's placeholders in order of first appearance: the input columns of a named-column template."""
    seen: dict[str, None] = {}
    for name in _parsed_names(template):
        seen.setdefault(name)
    return tuple(seen)


def names_columns(template: str) -> bool:
    """Whether a template names data columns (``{premise}``) rather than using ``{text}``/``{text_pair}``."""
    return bool(template_fields(template) - set(TEMPLATE_FIELDS))


def _parsed_names(template: str) -> list[str]:
    template_fields(template)  # raises the user error for a malformed template
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its data lives, its type, its labels (classification), and how an input becomes a prompt.

    ``task_type`` is ``classification`` (``labels`` and one ``verbalizer`` answer per label), ``generation`` (each
    example has a target text; no labels) or ``regression`` (each example has a number; no labels). Regression on
    decoder backbones is text-to-text: the target is rendered on a ``grid`` (T5's 0.2 for STS-B) and the output parsed
    back; ``value_range`` (min, max of the training targets) gives the fallback for an unparseable output, the grid
    point nearest the range's midpoint. ``metric`` is the primary metric (``@best``, ``list --sort``, compare).
    Raises ``EptctlError`` for an inconsistent spec.
    """

    name: str
    description: str
    labels: tuple[str, ...]
    verbalizer: tuple[str, ...]
    template: str
    metric: str = ""  # empty: the task type's default (accuracy, rouge_l, pearson)
    source: dict = field(default_factory=dict, hash=False)  # a dict cannot be hashed; equality still compares it
    task_type: str = DEFAULT_TASK_TYPE
    grid: float | None = None  # regression: targets rounded to multiples of this (default DEFAULT_GRID)
    value_range: tuple[float, float] | None = None  # regression: (min, max) of the training targets
    # Named input columns, in input order, when the template names them ({premise}, {hypothesis}...); empty: the
    # template uses {text} and {text_pair}. The first column is an example's ``text``, the second its ``text_pair``.
    input_columns: tuple[str, ...] = ()

    def __post_init__(self):
        # Lists arrive from JSON; tuples keep the frozen spec hashable and comparable.
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        object.__setattr__(self, "verbalizer", tuple(str(answer) for answer in self.verbalizer))
        object.__setattr__(self, "input_columns", tuple(str(column) for column in self.input_columns))
        if self.task_type not in _TABLE:
            raise EptctlError(f"task '{self.name}' has an unknown task type {self.task_type!r}",
                              hint=f"use --task-type {' | '.join(_TABLE)}")
        kind = self.strategy
        if not self.metric:
            object.__setattr__(self, "metric", kind.default_metric)
        for key, value in kind.normalised(self).items():
            object.__setattr__(self, key, value)
        self._check_template()
        kind.check_labels(self)

    def _check_template(self) -> None:
        used = template_fields(self.template)
        if self.input_columns:
            columns = set(self.input_columns)
            if used != columns or len(columns) != len(self.input_columns):
                raise EptctlError(
                    f"template of task '{self.name}' must name each of its columns ({', '.join(self.input_columns)}) "
                    f"once or more and no other, got {self.template!r}",
                    hint="write one {placeholder} per input column, e.g. 'premise: {premise} hypothesis: {hypothesis}'",
                )
            return
        if "text" not in used or used - set(TEMPLATE_FIELDS):
            raise EptctlError(
                f"template of task '{self.name}' must use {{text}} and may use {{text_pair}}, got {self.template!r}",
                hint="for example 'Review: {text}\\nSentiment:'",
            )

    @property
    def strategy(self) -> TaskType:
        """The behaviour of the task's type (``data.task_types``): what everything else asks instead of the name."""
        return _TABLE[self.task_type]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def head_size(self) -> int:
        """Outputs of an encoder backbone's head: one per label, one number for regression, none for generation."""
        return self.strategy.head_size(self.num_labels)

    @property
    def decimals(self) -> int:
        """Regression: digits after the point that the grid needs (0.2 -> 1, 0.25 -> 2, 1 -> 0)."""
        text = f"{self.grid or DEFAULT_GRID:.6f}".rstrip("0")
        return len(text.split(".")[1]) if "." in text else 0

    @property
    def fallback_value(self) -> float:
        """Regression: the prediction for an unparseable output, the grid point nearest the targets' midpoint."""
        low, high = self.value_range or (0.0, 0.0)
        grid = self.grid or DEFAULT_GRID
        return round(round((low + high) / 2 / grid) * grid, self.decimals)

    @property
    def uses_text_pair(self) -> bool:
        """Whether an input is two texts: a ``{text_pair}`` template, or a task with two named columns."""
        if self.input_columns:
            return len(self.input_columns) >= 2
        return "text_pair" in template_fields(self.template)

    @property
    def text_columns(self) -> tuple[str, str | None]:
        """A named-column task's file columns for ``text`` and ``text_pair`` (the first two input columns; None for
        the second of a one-column task). Only for tasks with ``input_columns``."""
        return self.input_columns[0], (self.input_columns[1] if len(self.input_columns) > 1 else None)

    @property
    def columns(self) -> tuple[str, ...]:
        """The names an input's texts go by: the named input columns, or ``text`` (and ``text_pair``)."""
        return self.input_columns or (("text", "text_pair") if self.uses_text_pair else ("text",))

    def values(self, example: Example) -> dict[str, str]:
        """An example's texts by column name (``columns``), the mapping the template is filled from."""
        texts = [example.text, example.text_pair or ""] + [value for _, value in example.fields]
        return dict(zip(self.columns, texts))

    def prompt(self, example: Example) -> str:
        """The template filled with one example: the text the answer follows."""
        return self.template.format(**self.values(example))

    def to_dict(self) -> dict:
        d = {"schema_version": SPEC_SCHEMA_VERSION, **asdict(self)}
        # Specs keep the exact keys of earlier versions, so their artifacts stay byte-identical.
        if not self.input_columns:  # the keys of earlier versions, byte for byte
            d.pop("input_columns")
        for key in self.strategy.dropped_keys:
            d.pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TaskSpec:
        # Keys from a newer eptctl are ignored rather than refused, so an older install can still read the row.
        known = {f.name for f in fields(cls)}
        missing = [name for name in ("name", "labels", "verbalizer", "template") if name not in d]
        if missing:
            raise EptctlError(
                f"stored task spec lacks {', '.join(missing)}", hint="re-create the task from its data file"
            )
        kwargs = {key: value for key, value in d.items() if key in known}
        kwargs.setdefault("description", "")
        return cls(**kwargs)


@dataclass(frozen=True)
class Example:
    """One input and what the model should answer: a label index, a target text or a number.

    ``text`` and ``text_pair`` are the first two input columns; ``fields`` holds the values of a task's further
    named columns (``TaskSpec.input_columns[2:]``, in order) as ``(column, text)`` pairs.
    """

    text: str
    label: int  # classification: index into TaskSpec.labels; 0 for the other task types
    text_pair: str | None = None
    target: str | None = None  # generation: the reference output
    value: float | None = None  # regression: the number
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TaskData:
    spec: TaskSpec
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    fingerprint: str  # of the splits as loaded (after --max-train / --max-eval sampling)
    source_fingerprint: str = ""  # of the full splits: changes only when the task's data changes
    # Few-shot (--train-examples K): the number of training examples actually used, which is fewer than K when the
    # split (or --max-train) is smaller; None when no K was asked for. What the registry records.
    train_examples: int | None = None
    notes: tuple[str, ...] = ()  # one-line notes on what loading changed from what was asked, for the caller to show

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise EptctlError(f"unknown split '{name}'", hint=f"choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def label_counts(self, split: str) -> dict[str, int]:
        """Examples per label in ``split`` (empty for generation and regression tasks)."""
        counts = dict.fromkeys(self.spec.labels, 0)
        if not self.spec.strategy.has_labels:
            return counts
        for example in self.split(split):
            counts[self.spec.labels[example.label]] += 1
        return counts


def fingerprint(spec: TaskSpec, splits: dict[str, list[Example]]) -> str:
    """sha256 over what training sees: labels, answers, template and every example of every split, in order.

    The task name, description and source are left out: the same data under another name or path has the same
    fingerprint, which is what lets the registry spot it.
    """
    digest = hashlib.sha256()
    kind = spec.strategy
    head = {"labels": list(spec.labels), "verbalizer": list(spec.verbalizer), "template": spec.template}
    head.update(kind.fingerprint_head(spec))  # classification adds nothing: the bytes of earlier versions
    if spec.input_columns:
        head.update(input_columns=list(spec.input_columns))
    digest.update(json.dumps(head, sort_keys=True).encode())
    for name in SPLITS:
        digest.update(f"\n[{name}]\n".encode())
        for example in splits[name]:
            row = [example.text, example.text_pair, example.label] + kind.fingerprint_row(example)
            if example.fields:
                row += [list(example.fields)]
            digest.update(json.dumps(row).encode() + b"\n")
    return digest.hexdigest()
