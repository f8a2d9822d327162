"""Examples to token ids: a task's template filled with each example, tokenized in one call per task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eptctl import data
from eptctl.backbones.base import Backbone, EncodedExample, TaskEncoding


@dataclass
class EncodedTask:
    """A task's three splits encoded for one backbone, with the token ids of each label's answer."""

    spec: data.TaskSpec
    task_data: data.TaskData
    answers: TaskEncoding
    train: list[EncodedExample]
    validation: list[EncodedExample]
    test: list[EncodedExample]


def encode_examples(backbone: Backbone, spec: data.TaskSpec, examples: Sequence[data.Example], answers: TaskEncoding,
                    max_length: int) -> list[EncodedExample]:
    """The task's template filled with each example, tokenized in one call; rows over ``max_length`` tokens are
    truncated and marked (see ``Backbone.encode``)."""
    return backbone.encode([spec.prompt(e) for e in examples], [e.label for e in examples], answers, max_length)


def encode_task(backbone: Backbone, spec: data.TaskSpec, max_length: int, *, max_train: int | None = None,
                max_eval: int | None = None, seed: int = 0, task_data: data.TaskData | None = None) -> EncodedTask:
    """Load (unless ``task_data`` is given) and encode a task's splits; raises ``EptctlError`` for bad data."""
    task_data = task_data or data.load_task(spec, max_train=max_train, max_eval=max_eval, seed=seed)
    answers = backbone.encode_answers(spec.verbalizer)

    def enc(examples):
        return encode_examples(backbone, spec, examples, answers, max_length)

    return EncodedTask(spec, task_data, answers, enc(task_data.train), enc(task_data.validation), enc(task_data.test))
