"""What a task is (:class:`TaskSpec`), one labelled input (:class:`Example`) and a loaded task (:class:`TaskData`)."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, field, fields

from eptctl.core.errors import EptctlError

SPLITS = ("train", "validation", "test")
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


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: where its data lives, its labels, and how an input becomes a prompt."""

    name: str
    description: str
    labels: tuple[str, ...]
    verbalizer: tuple[str, ...]
    template: str
    metric: str = "accuracy"
    source: dict = field(default_factory=dict, hash=False)  # a dict cannot be hashed; equality still compares it

    def __post_init__(self):
        # Lists arrive from JSON; tuples keep the frozen spec hashable and comparable.
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        object.__setattr__(self, "verbalizer", tuple(str(answer) for answer in self.verbalizer))
        if len(self.labels) < 2:
            raise EptctlError(
                f"task '{self.name}' needs at least 2 labels, got {len(self.labels)}: {', '.join(self.labels) or '-'}",
                hint="check the label column, or pass the full label set",
            )
        if len(set(self.labels)) != len(self.labels):
            raise EptctlError(f"task '{self.name}' repeats a label: {', '.join(self.labels)}")
        if len(self.verbalizer) != len(self.labels):
            raise EptctlError(
                f"task '{self.name}' has {len(self.labels)} labels but {len(self.verbalizer)} verbalizer answers",
                hint="give one answer per label, in label order",
            )
        if len(set(self.verbalizer)) != len(self.verbalizer) or not all(a.strip() for a in self.verbalizer):
            raise EptctlError(
                f"task '{self.name}' needs distinct, non-empty answers, got: {', '.join(map(repr, self.verbalizer))}",
                hint="pass a verbalizer with one distinct word per label",
            )
        used = template_fields(self.template)
        if "text" not in used or used - set(TEMPLATE_FIELDS):
            raise EptctlError(
                f"template of task '{self.name}' must use {{text}} and may use {{text_pair}}, got {self.template!r}",
                hint="for example 'Review: {text}\\nSentiment:'",
            )

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def uses_text_pair(self) -> bool:
        return "text_pair" in template_fields(self.template)

    def prompt(self, example: Example) -> str:
        """The template filled with one example: the text the answer follows."""
        return self.template.format(text=example.text, text_pair=example.text_pair or "")

    def to_dict(self) -> dict:
        return {"schema_version": SPEC_SCHEMA_VERSION, **asdict(self)}

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
    text: str
    label: int  # index into TaskSpec.labels
    text_pair: str | None = None


@dataclass(frozen=True)
class TaskData:
    spec: TaskSpec
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    fingerprint: str  # of the splits as loaded (after --max-train / --max-eval sampling)
    source_fingerprint: str = ""  # of the full splits: changes only when the task's data changes

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise EptctlError(f"unknown split '{name}'", hint=f"choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def label_counts(self, split: str) -> dict[str, int]:
        counts = dict.fromkeys(self.spec.labels, 0)
        for example in self.split(split):
            counts[self.spec.labels[example.label]] += 1
        return counts


def fingerprint(spec: TaskSpec, splits: dict[str, list[Example]]) -> str:
    """sha256 over what training sees: labels, answers, template and every example of every split, in order.

    The task name, description and source are left out: the same data under another name or path has the same
    fingerprint, which is what lets the registry spot it.
    """
    digest = hashlib.sha256()
    head = {"labels": list(spec.labels), "verbalizer": list(spec.verbalizer), "template": spec.template}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for name in SPLITS:
        digest.update(f"\n[{name}]\n".encode())
        for example in splits[name]:
            digest.update(json.dumps([example.text, example.text_pair, example.label]).encode() + b"\n")
    return digest.hexdigest()
