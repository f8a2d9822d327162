"""Resolving and loading tasks as raw text: builtin tasks, user files and hub datasets, deterministic splits.

Tokenisation happens elsewhere; everything here returns strings and label indices. Builtin tasks never touch the
network, and importing this module stays light (``datasets`` is imported only to read a custom task's data).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eptctl.core.errors import EptctlError
from eptctl.data.glue import CATALOGUE, read_splits
from eptctl.data.packaged import BUILTINS
from eptctl.data.rows import RawRow, checked_texts, infer_label_names, readable, to_examples
from eptctl.data.spec import (
    Example, TaskData, TaskSpec, fingerprint, names_columns, template_columns, template_fields,
)
from eptctl.data.task_types import DEFAULT_TASK_TYPE, TASK_TYPES, TaskType, task_type as _task_type
from eptctl.data.splits import SplitPolicy, make_splits, small_validation_note, stratified_sample, subsample
from eptctl.data.tables import describe, locate, read_rows

# Builtin: the packaged tasks, then the paper's GLUE/SuperGLUE catalogue (data from the data directory).
BUILTIN_TASKS: dict[str, TaskSpec] = {name: task.spec for name, task in {**BUILTINS, **CATALOGUE}.items()}
CUSTOM_SPLITS = SplitPolicy(validation_fraction=0.1, test_fraction=0.1, max_validation=500, max_test=1000)
DEFAULT_TEMPLATE = "Text: {text}\nLabel:"
DEFAULT_PAIR_TEMPLATE = "Text A: {text}\nText B: {text_pair}\nLabel:"
# The answer cue of the default template, by task type, for callers of earlier versions (the table is
# data.task_types; the pair form swaps the first line as above).
DEFAULT_CUE = {name: kind.cue for name, kind in TASK_TYPES.items()}
# Task names end up in adapter references such as TASK@VERSION, so "@" and spaces are out.
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class DataOptions:
    """A custom task's data: ``--data PATH``, its columns and template (the CLI's "Custom data" options)."""

    path: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"  # classification labels; for generation and regression the target column
    template: str | None = None
    hub: bool = False
    task_type: str = DEFAULT_TASK_TYPE
    metric: str | None = None  # the primary metric; None: the task type's default
    grid: float | None = None  # regression: round targets to multiples of this (None: 0.2)

    def __post_init__(self):
        _task_type(self.task_type)  # raises EptctlError naming the known types

    @property
    def kind(self) -> TaskType:
        """The strategy of ``task_type``."""
        return _task_type(self.task_type)


def default_template(task_type: str, pair: bool) -> str:
    """The template a custom task gets when none is given."""
    base = DEFAULT_PAIR_TEMPLATE if pair else DEFAULT_TEMPLATE
    kind = TASK_TYPES.get(task_type)  # an unknown type keeps "Label:": TaskSpec refuses it, naming the task
    return base.replace("Label:", kind.cue if kind is not None else "Label:")


def builtin_task(name: str) -> TaskSpec:
    if name not in BUILTIN_TASKS:
        raise EptctlError(f"unknown builtin task '{name}'", hint=f"builtin tasks: {', '.join(BUILTIN_TASKS)}")
    return BUILTIN_TASKS[name]


def resolve_task(name: str, *, stored: dict[str, TaskSpec] | None = None) -> TaskSpec:
    """A task by name: builtin tasks first, then the ones stored in the registry."""
    stored = stored or {}
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    if name in stored:
        return stored[name]
    known = [*BUILTIN_TASKS, *stored]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"builtin tasks: {', '.join(BUILTIN_TASKS)}; stored tasks: {', '.join(stored) or 'none'}"
    raise EptctlError(f"unknown task '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""), hint=hint)


def _check_task_name(name: str) -> None:
    if not _TASK_NAME.fullmatch(name):
        raise EptctlError(
            f"invalid task name {name!r}", hint="use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    if name in BUILTIN_TASKS:
        raise EptctlError(f"'{name}' is a builtin task", hint="choose another name for a custom task")


def custom_task(
    name: str,
    path: str | Path | DataOptions,
    *,
    labels: Sequence[str] | None = None,
    verbalizer: Sequence[str] | None = None,
    description: str = "",
    **options,
) -> TaskSpec:
    """A task over the user's data, checked by reading it once: columns, texts, labels (sorted unless given) or, for
    ``task_type`` generation and regression, the target column named by ``label_column``.

    ``path`` is a :class:`DataOptions`, or its ``path`` with the other fields as keywords (``text_column``,
    ``label_column``, ``template``, ``hub``, ``task_type``, ``metric``, ``grid``...): a CSV/TSV/JSON Lines/Parquet
    file, a folder with train/validation/test files, or, with ``hub=True`` and no such local path, a hub dataset
    name ``owner/name``. Raises ``EptctlError`` for bad data.
    """
    custom = dataclasses.replace(path, **options) if isinstance(path, DataOptions) else DataOptions(path, **options)
    _check_task_name(name)
    kind = custom.kind
    source, input_columns = _custom_source(custom)
    rows = _source_rows(source, kind.answer_column)
    every_row = [raw for split_rows in rows.values() for raw in split_rows]
    if not every_row:
        raise EptctlError(f"{custom.path} has no rows", hint="add one row per example")
    template = custom.template
    if template is None:
        template = default_template(custom.task_type, bool(source["text_pair_column"]))
    if not input_columns:
        _check_pair_template(template, source["text_pair_column"])
    fields = kind.custom_fields(every_row, describe(source), custom.label_column)
    if kind.has_labels:
        labels, verbalizer = _label_set(custom, every_row, labels, verbalizer)
    else:
        labels, verbalizer = (), ()
    spec = TaskSpec(name=name, description=description or kind.custom_description(Path(str(custom.path)).name),
                    labels=tuple(labels), verbalizer=tuple(verbalizer), template=template, metric=custom.metric or "",
                    source=source, task_type=custom.task_type,
                    grid=None if kind.has_labels else custom.grid,  # classification specs never carried a grid
                    input_columns=input_columns, **fields)
    for split, split_rows in rows.items():
        _examples(spec, split_rows, split)
    return spec


def _custom_source(custom: DataOptions) -> tuple[dict, tuple[str, ...]]:
    """The stored source of a custom task (where its data is, which columns it reads) and its named input columns
    (empty unless the template names them)."""
    source = locate(custom.path, hub=custom.hub)
    text_column, text_pair_column, label_column = custom.text_column, custom.text_pair_column, custom.label_column
    template = custom.template
    input_columns: tuple[str, ...] = ()
    if template is not None and names_columns(template):
        # The template names the columns to read ({premise}, {hypothesis}...): they replace --text-column and
        # --text-pair-column, and the first two play their parts.
        if text_pair_column is not None or text_column != "text":
            raise EptctlError(f"template {template!r} names its input columns, and --text-column/--text-pair-column "
                              "name them too", hint="name the columns in the template only")
        input_columns = template_columns(template)
        if label_column in input_columns:
            raise EptctlError(f"template {template!r} names the {custom.kind.answer_column} column '{label_column}': "
                              "the answer would be in the prompt", hint="name only input columns in the template")
        text_column = input_columns[0]
        text_pair_column = input_columns[1] if len(input_columns) > 1 else None
        source.update(extra_columns=list(input_columns[2:]))
    source.update(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column)
    return source, input_columns


def _label_set(custom: DataOptions, every_row: list[RawRow], labels: Sequence[str] | None,
               verbalizer: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A classification task's labels (as given, or the file's, sorted) and verbalizer (as given, or readable
    label names); ``EptctlError`` for fewer than two labels in the file."""
    if labels is None:
        labels = infer_label_names(raw.label for raw in every_row)
        if len(labels) < 2:
            raise EptctlError(
                f"column '{custom.label_column}' of {custom.path} has {len(labels)} distinct label(s), a task needs "
                "at least 2", hint="check the label column",
            )
    answers = tuple(verbalizer) if verbalizer is not None else tuple(readable(label) for label in labels)
    return tuple(labels), answers


def _check_pair_template(template: str, text_pair_column: str | None) -> None:
    if ("text_pair" in template_fields(template)) != bool(text_pair_column):
        raise EptctlError(
            f"template {template!r} and text_pair_column={text_pair_column!r} disagree",
            hint="use {text_pair} in the template exactly when a text pair column is given",
        )


def load_task(
    spec: TaskSpec, *, max_train: int | None = None, max_eval: int | None = None, seed: int = 0,
    train_examples: int | None = None,
) -> TaskData:
    """The task's examples in fixed train/validation/test splits.

    The splits never depend on ``seed``. ``train_examples`` keeps K training examples for few-shot runs, stratified
    by label and the same for every seed (``splits.stratified_sample``); ``max_train`` draws a ``seed``-dependent
    sample of train; ``max_eval`` keeps the first examples of validation and of test, the same for every seed, so
    evaluations stay comparable.

    With ``train_examples``, the result's ``train_examples`` is the number of training examples actually used and
    ``notes`` says so when it is not K. Raises ``EptctlError`` for unreadable data, and for a K below the number of
    labels of a classification task (a label would have no example).
    """
    _check_few_shot(spec, train_examples)
    kind = spec.source.get("kind")
    if kind == "builtin":
        task = BUILTINS.get(spec.name)
        if task is None:
            raise EptctlError(
                f"builtin task '{spec.name}' is not known to this eptctl version",
                hint=f"builtin tasks: {', '.join(BUILTINS)}",
            )
        given = {"train": _examples(spec, task.raw_rows(), "all")}
        policy = task.splits
    elif kind == "benchmark":
        if spec.name not in CATALOGUE:
            raise EptctlError(f"benchmark task '{spec.name}' is not known to this eptctl version",
                              hint=f"benchmark tasks: {', '.join(CATALOGUE)}")
        given = {split: _examples(spec, rows, split) for split, rows in read_splits(CATALOGUE[spec.name]).items()}
        policy = CUSTOM_SPLITS  # unused: the protocol gives all three splits
    elif kind in ("file", "hub"):
        given = {split: _examples(spec, rows, split)
                 for split, rows in _source_rows(spec.source, spec.strategy.answer_column).items()}
        given["train"] = given.pop("all", given.get("train"))
        policy = CUSTOM_SPLITS
    else:
        raise EptctlError(f"task '{spec.name}' has an unknown data source kind {kind!r}")
    splits = make_splits(given, policy, where=_where(spec))
    small = small_validation_note(splits, _short_where(spec)) if kind in ("file", "hub") else None
    source = fingerprint(spec, splits)
    by_label = (lambda e: e.label) if spec.strategy.has_labels else None
    available = len(splits["train"])
    splits = {
        "train": subsample(stratified_sample(splits["train"], train_examples, by_label), max_train, seed=seed),
        "validation": subsample(splits["validation"], max_eval, seed=None),
        "test": subsample(splits["test"], max_eval, seed=None),
    }
    used = None if train_examples is None else len(splits["train"])
    return TaskData(spec=spec, fingerprint=fingerprint(spec, splits), source_fingerprint=source, **splits,
                    train_examples=used,
                    notes=_few_shot_notes(train_examples, used, available, max_train) + ((small,) if small else ()))


def _check_few_shot(spec: TaskSpec, k: int | None) -> None:
    """A K-shot sample of a classification task needs one example per label at least: with fewer, some label is
    never seen in training, silently."""
    if k is not None and spec.strategy.has_labels and k < spec.num_labels:
        raise EptctlError(f"--train-examples {k} is fewer than the {spec.num_labels} labels of task '{spec.name}': "
                          "some label would have no training example",
                          hint=f"use --train-examples {spec.num_labels} or more (one example per label at least)")


def _few_shot_notes(k: int | None, used: int | None, available: int, max_train: int | None) -> tuple[str, ...]:
    if k is None or used == k:
        return ()
    why = (f"the training split has {available} examples" if available < k
           else f"--max-train {max_train} keeps {used}")
    return (f"--train-examples {k}: {why}; training on {used} (recorded as train_examples = {used})",)


def read_texts(
    path: str | Path, *, text_column: str = "text", text_pair_column: str | None = None, hub: bool = False
) -> list[tuple[str, str | None]]:
    """(text, text_pair) for every row of a file, in order, splits ignored: inputs for inference."""
    source = locate(path, hub=hub)
    rows = read_rows(source, text_column=text_column, text_pair_column=text_pair_column, label_column=None)
    every_row = [raw for split_rows in rows.values() for raw in split_rows]
    return checked_texts(every_row, where=describe(source), text_column=text_column, text_pair_column=text_pair_column)


def read_examples(
    path: str | Path,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    hub: bool = False,
    task_type: str = DEFAULT_TASK_TYPE,
    extra_columns: Sequence[str] = (),
) -> list[Example]:
    """Every row of a file as an example, in order, splits ignored: evaluation on a file.

    Pass the task's ``labels`` so indices match the task; without them they are inferred from the file. For
    generation and regression ``label_column`` is the target column. ``extra_columns``: a named-column task's
    columns after the first two (``TaskSpec.input_columns[2:]``).
    """
    kind = _task_type(task_type)
    source = locate(path, hub=hub)
    rows = read_rows(source, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                     label_role=kind.answer_column, extra_columns=tuple(extra_columns))
    every_row = [raw for split_rows in rows.values() for raw in split_rows]
    if kind.has_labels:
        labels = tuple(labels) if labels is not None else infer_label_names(raw.label for raw in every_row)
    return to_examples(
        every_row, tuple(labels or ()), where=describe(source), text_column=text_column,
        text_pair_column=text_pair_column, label_column=label_column, task_type=task_type,
    )


def _source_rows(source: dict, label_role: str = "label") -> dict[str, list[RawRow]]:
    """A source's rows by split; ``label_role`` names the answer column in messages (its task type's
    ``answer_column``)."""
    rows = read_rows(
        source,
        text_column=source.get("text_column", "text"),
        text_pair_column=source.get("text_pair_column"),
        label_column=source.get("label_column", "label"),
        label_role=label_role,
        extra_columns=tuple(source.get("extra_columns", ())),
    )
    # A split without a single label (a hidden test set, usual on the hub) cannot be evaluated: it is cut from train.
    return {
        split: split_rows
        for split, split_rows in rows.items()
        if split in ("all", "train") or any(raw.label is not None for raw in split_rows)
    }


def _short_where(spec: TaskSpec) -> str:
    """A custom task's data by its file name (or hub name), short enough for a one-line note."""
    path = spec.source.get("path")
    return Path(path).name if path else _where(spec)


def _where(spec: TaskSpec) -> str:
    return describe(spec.source) if spec.source.get("kind") in ("file", "hub") else f"task '{spec.name}'"


def _examples(spec: TaskSpec, rows: list[RawRow], split: str) -> list[Example]:
    where = _where(spec) if split == "all" else f"{_where(spec)} ({split})"
    source = spec.source
    text_column, text_pair_column = spec.text_columns if spec.input_columns else ("text", None)
    return to_examples(
        rows,
        spec.labels,
        where=where,
        text_column=source.get("text_column", text_column),
        text_pair_column=source.get("text_pair_column", text_pair_column),
        label_column=source.get("label_column", "label"),
        task_type=spec.task_type,
    )

