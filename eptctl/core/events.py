"""Typed events that long-running library calls report through an ``on_event`` callback.

The library never prints: the training loop and the workflows emit these dataclasses, and the CLI renders them (a
Rich progress bar, one line per evaluation). A caller that wants a log can use :func:`as_dict` on any event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Event:
    """Base of every event; ``kind`` names it in logs and JSON."""

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class DataLoaded(Event):
    task: str
    sizes: dict[str, int]  # split -> examples
    metric: str = "accuracy"  # the task's primary metric (what picks the best step)
    task_type: str = "classification"  # data.task_types.DEFAULT_TASK_TYPE (core imports no layer above it)


@dataclass(frozen=True)
class Note(Event):
    """One line for the user about what a workflow did differently from what was asked (e.g. fewer few-shot
    examples than ``--train-examples`` because the data has fewer)."""

    text: str


@dataclass(frozen=True)
class LoadingModel(Event):
    model: str
    converting: bool = False  # a first use that converts the packaged model into its cache


@dataclass(frozen=True)
class Resumed(Event):
    step: int
    total: int


@dataclass(frozen=True)
class TrainingStarted(Event):
    total: int  # optimiser steps of the run
    step: int  # first step to run (0, or where a resumed run continues)
    params: dict[str, int]  # trainable parameters by group, with "total"
    batch_size: int = 0  # examples per step
    eval_every: int = 0  # --eval-every: steps between evaluations that pick the best step (0: the last step is kept)
    eval_steps: tuple[int, ...] = ()  # the steps validated during the run
    eval_rows: int = 0  # validation rows each in-training evaluation scores
    final_rows: int = 0  # rows the final evaluation scores (validation and test)


@dataclass(frozen=True)
class StepDone(Event):
    step: int
    total: int
    loss: float  # mean loss of the global batch
    lr: float  # learning rate of the first parameter group


@dataclass(frozen=True)
class Evaluated(Event):
    step: int
    total: int
    metrics: dict[str, float]  # validation metrics at this step
    best_step: int
    examples: int = 0  # validation rows they were computed on (the in-training subset)


@dataclass(frozen=True)
class FinalEvaluation(Event):
    best_step: int


@dataclass(frozen=True)
class TrainingDone(Event):
    metrics: dict[str, dict[str, float]]  # split -> metric -> value of the best checkpoint
    best_step: int


@dataclass(frozen=True)
class SourcesChosen(Event):
    """``--init-from auto``: the stored adapters picked, best first (``shared_answers`` and ``probe_score`` where
    probed)."""

    ranked: list[dict]


@dataclass(frozen=True)
class FusedInit(Event):
    parents: list[tuple[str, float]]  # (adapter ref, e.g. rt-polarity@1, normalised weight)


@dataclass(frozen=True)
class AttentionInit(Event):
    sources: list[str]  # refs of the frozen source prompts


@dataclass(frozen=True)
class StageStarted(Event):
    """A continual run starts learning its next task."""

    stage: int
    task: str
    init_from: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ForwardTransfer(Event):
    task: str
    fused_init: float  # test accuracy from the fused start
    random_init: float  # test accuracy from a random start at the same budget
    delta: float


EventHandler = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default handler: drop the event."""


def as_dict(event: Event) -> dict:
    """A JSON-ready view: ``{"event": kind, **fields}``."""
    return {"event": event.kind, **asdict(event)}
