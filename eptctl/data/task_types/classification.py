"""Classification: a label set, one verbalizer answer per label; each label's answer is scored after the template."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from eptctl.core.errors import EptctlError
from eptctl.data.task_types.base import TaskType

INTEGER = re.compile(r"-?\d+")


def canonical_label(value: Any) -> str | None:
    """The label as a name: ints and integral floats (pandas turns an int column with gaps into floats) as digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    name = str(value).strip()
    return name or None


def label_index(labels: Sequence[str]):
    """A function from a label name to its index in ``labels`` (None when it is not one of them)."""
    by_name = {name: index for index, name in enumerate(labels)}
    names_are_numbers = all(INTEGER.fullmatch(name) for name in labels)

    def index_of(name: str) -> int | None:
        if name in by_name:
            return by_name[name]
        # Integer labels against named classes (0/1 data, labels ("neg", "pos")) are positions in the label set.
        if not names_are_numbers and INTEGER.fullmatch(name) and 0 <= int(name) < len(labels):
            return int(name)
        return None

    return index_of


class Classification(TaskType):
    """Labels and a verbalizer; trained on the label scores' cross-entropy by default; accuracy first."""

    name = "classification"
    default_metric = "accuracy"
    primary_metrics = ("accuracy", "macro_f1", "f1", "mcc")
    cue = "Label:"
    answer_column = "label"
    has_labels = True
    objective = "classify"
    dropped_keys = ("task_type", "grid", "value_range")  # the keys of specs from before task types
    card_use = "Classifies text for the task `{task}` into {labels}"
    card_how = ("Each label is scored by the mean log-likelihood of its answer after the task's template "
                "(encoders: by the adapter's head).")
    predicts = "label, per-label scores and probabilities"

    def head_size(self, num_labels: int) -> int:
        return num_labels

    def check_labels(self, spec) -> None:
        if len(spec.labels) < 2:
            raise EptctlError(
                f"task '{spec.name}' needs at least 2 labels, got {len(spec.labels)}: {', '.join(spec.labels) or '-'}",
                hint="check the label column, or pass the full label set",
            )
        if len(set(spec.labels)) != len(spec.labels):
            raise EptctlError(f"task '{spec.name}' repeats a label: {', '.join(spec.labels)}")
        if len(spec.verbalizer) != len(spec.labels):
            raise EptctlError(
                f"task '{spec.name}' has {len(spec.labels)} labels but {len(spec.verbalizer)} verbalizer answers",
                hint="give one answer per label, in label order",
            )
        if len(set(spec.verbalizer)) != len(spec.verbalizer) or not all(a.strip() for a in spec.verbalizer):
            raise EptctlError(
                f"task '{spec.name}' needs distinct, non-empty answers, got: {', '.join(map(repr, spec.verbalizer))}",
                hint="pass a verbalizer with one distinct word per label",
            )

    # Classification keeps the fingerprint bytes of versions before task types.
    def fingerprint_head(self, spec) -> dict[str, Any]:
        return {}

    def fingerprint_row(self, example) -> list[Any]:
        return []

    def custom_description(self, filename: str) -> str:
        return f"custom task from {filename}"

    def read_answers(self, rows, labels, where, column):
        index_of = label_index(labels)
        answers = []
        for raw in rows:
            name = canonical_label(raw.label)
            if name is None:
                raise EptctlError(
                    f"row {raw.row} of {where} has no label in column '{column}'",
                    hint="fill in or drop rows without a label",
                )
            index = index_of(name)
            if index is None:
                raise EptctlError(
                    f"label '{name}' (row {raw.row} of {where}) is not in the task's label set: {', '.join(labels)}",
                    hint="a task keeps the labels it was created with; create a new task for a different label set",
                )
            answers.append({"label": index})
        return answers

    def evaluate(self, run, encoded):
        return run.classification_metrics(run.label_scores(encoded), [e.label for e in encoded])

    def predict_rows(self, run, encoded, index):
        return [_row(run.servables[a], scores, e.truncated)
                for a, scores, e in zip(index, run.label_scores(encoded, index), encoded)]


def _row(servable, scores, truncated: bool) -> dict:
    """One prediction: the arg-max label, each label's raw ``scores`` and their ``probabilities``."""
    labels = servable.spec.labels
    return {"adapter": servable.record.ref, "label": labels[int(scores.argmax())],
            "scores": {label: round(float(v), 6) for label, v in zip(labels, scores)},
            "probabilities": {label: round(p, 6) for label, p in zip(labels, label_probabilities(scores.tolist()))},
            "truncated": bool(truncated)}


def label_probabilities(scores: Sequence[float]) -> list[float]:
    """The softmax of one row's label scores [num_labels]: a distribution over the task's labels that sums to 1 and
    ranks them as the scores do. A score is a length-normalised log-likelihood (the mean log-probability per token
    of the label's answer) or, on encoders, the head's log-probability, where this softmax is exactly the head's
    probability. It is not calibrated: it says how the model splits its preference among these labels only."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]  # shifted by the maximum: no overflow (the softmax is unchanged)
    total = sum(weights)
    return [w / total for w in weights]


CLASSIFICATION = Classification()
