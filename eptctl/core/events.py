"""Typed events that long-running library calls report through an ``on_event`` callback.

The library never prints: the training loop and the workflows emit these dataclasses, and a reporter renders them
(:class:`eptctl.core.progress.ConsoleProgress`: live bars on a terminal, periodic lines in a log; the CLI uses the
same one). A caller that wants a log of its own can use :func:`as_dict` on any event.

Long phases below the workflows (model conversion, a scoring or decoding pass) do not take a handler argument: the
caller opens a :func:`phase` and the inner loops call :func:`advance` once per batch, which reaches the innermost
open phase of this thread (a ``contextvars`` stack, as ``decimal.localcontext`` does). A phase opened without an
explicit ``emit`` reports to the handler installed by :func:`reporting`; with none installed it costs a few
attribute reads and emits nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
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
    loss: float  # mean loss of the global batch of step ``loss_step`` (losses are read every few steps)
    lr: float  # learning rate of the first parameter group
    loss_step: int | None = None  # the step ``loss`` belongs to (None: this step)


@dataclass(frozen=True)
class Evaluated(Event):
    step: int
    total: int
    metrics: dict[str, float]  # validation metrics at this step
    best_step: int  # the step the run would keep were it to end now (the best so far, or this one)
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


@dataclass(frozen=True)
class PhaseStarted(Event):
    """A long phase begins: ``total`` units of work (0: unknown), counted in ``unit`` (rows, tensors...)."""

    name: str  # what the user reads: "final evaluation: validation", "converting smollm2-135m"
    total: int
    unit: str = "rows"


@dataclass(frozen=True)
class PhaseAdvanced(Event):
    """``done`` of ``total`` units of the phase ``name`` are finished (sent after each batch)."""

    name: str
    done: int
    total: int


@dataclass(frozen=True)
class PhaseDone(Event):
    """The phase ``name`` ended after ``seconds`` of wall time with ``done`` units finished (``ok`` False: it
    raised)."""

    name: str
    done: int
    seconds: float
    ok: bool = True


EventHandler = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default handler: drop the event."""


def tee(*handlers: EventHandler | None) -> EventHandler:
    """One handler that passes each event to every given handler in order (None entries are skipped)."""
    chosen = [h for h in handlers if h is not None and h is not ignore]
    if not chosen:
        return ignore
    if len(chosen) == 1:
        return chosen[0]

    def both(event: Event) -> None:
        for handler in chosen:
            handler(event)
    return both


# --- phases: progress of work below the workflows -------------------------------------------------------------------
_handler: contextvars.ContextVar[EventHandler | None] = contextvars.ContextVar("eptctl_event_handler", default=None)
_phases: contextvars.ContextVar[tuple[_Phase, ...]] = contextvars.ContextVar("eptctl_phases", default=())


def current() -> EventHandler:
    """The handler installed by :func:`reporting` in this context (:func:`ignore` when none is)."""
    return _handler.get() or ignore


def emit(event: Event) -> None:
    """Send ``event`` to the :func:`current` handler."""
    current()(event)


@contextlib.contextmanager
def reporting(handler: EventHandler | None) -> Iterator[EventHandler]:
    """Install ``handler`` for the phases and events emitted below this block (None: leave the current one)."""
    if handler is None or handler is ignore:
        yield current()
        return
    token = _handler.set(handler)
    try:
        yield handler
    finally:
        _handler.reset(token)


class _Phase:
    """An open phase: its name, size and progress, and the handler it reports to."""

    def __init__(self, name: str, total: int, emit_to: EventHandler):
        self.name, self.total, self.done, self.emit = name, max(0, int(total)), 0, emit_to
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        self.emit(PhaseAdvanced(self.name, self.done, max(self.total, self.done)))


@contextlib.contextmanager
def phase(name: str, total: int, unit: str = "rows", emit: EventHandler | None = None) -> Iterator[_Phase]:
    """A long phase: :class:`PhaseStarted` now, :class:`PhaseAdvanced` on each :func:`advance` below it, and
    :class:`PhaseDone` when the block ends (also when it raises, with ``ok`` False). ``emit``: the handler (default:
    the :func:`current` one)."""
    handler = emit or current()
    opened = _Phase(name, total, handler)
    token = _phases.set((*_phases.get(), opened))
    handler(PhaseStarted(name, opened.total, unit))
    ok = False
    try:
        yield opened
        ok = True
    finally:
        _phases.reset(token)
        handler(PhaseDone(name, opened.done, time.perf_counter() - opened.started, ok))


def advance(n: int = 1) -> None:
    """``n`` more units of the innermost open phase are done; nothing happens outside a phase."""
    open_phases = _phases.get()
    if open_phases and n:
        open_phases[-1].advance(n)


def as_dict(event: Event) -> dict:
    """A JSON-ready view: ``{"event": kind, **fields}``."""
    return {"event": event.kind, **asdict(event)}
