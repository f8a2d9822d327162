"""A ready console reporter for eptctl's typed events (:mod:`eptctl.core.events`), the one the CLI uses too.

``ConsoleProgress`` is an event handler: pass it as ``on_event``, turn it on with ``train_task(..., progress=True)``,
or install it for every call in a block with ``with ConsoleProgress(): ...``. On a terminal it draws live Rich bars
(imported only then); elsewhere (a redirected log, a notebook's captured stream, CI) it writes plain lines, flushed
one by one so they stay in order: a line when a phase starts and ends, at every tenth of it, and at least every
``interval`` seconds while anything runs, so a log is never silent for minutes. With a ``logger`` the lines go to
``logger.info`` instead (transformers' ``PrinterCallback`` does the same for logs).

Every bar carries a time left that is re-estimated at each update: a phase from its own rate so far, training from
the median of its recent steps plus the evaluations still to come (timed on the run's own evaluations once one ran).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from eptctl.core import events
from eptctl.core.errors import EptctlError

INTERVAL_S = 30.0  # longest silence of a log while a phase runs ($EPTCTL_PROGRESS_INTERVAL overrides it)
# Until an evaluation has been timed, scoring a row is taken as 0.45 of a training row's share of a step: forward
# only, no input gradients (measured 0.085 s against 3.0 s / 16 for SmolLM2 on a 2-core CPU in fp32).
EVAL_ROW_SHARE = 0.45


def fmt_duration(seconds: float) -> str:
    """``42 s`` or ``3 min 05 s``."""
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def fmt_metric(value: float | None) -> str:
    """A metric with four decimals, ``-`` for none."""
    return "-" if value is None else f"{value:.4f}"


def fmt_metrics(values: dict[str, float], primary: str | None = None, limit: int = 4) -> str:
    """``name value`` pairs, the primary metric first: ``rouge_l 0.3120, exact_match 0.0400``."""
    names = sorted(values, key=lambda name: name != primary)[:limit]
    counts = ("unparseable",)  # a count of rows, not a score
    return ", ".join(f"{name} {int(values[name]) if name in counts else fmt_metric(values[name])}"
                     for name in names) or "-"


def default_interval() -> float:
    """Seconds between progress lines in a log: ``$EPTCTL_PROGRESS_INTERVAL`` (as tqdm reads ``TQDM_MININTERVAL``),
    else ``INTERVAL_S``. Raises ``EptctlError`` for a value that is not a number of seconds >= 0."""
    value = os.environ.get("EPTCTL_PROGRESS_INTERVAL", "").strip()
    if not value:
        return INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise EptctlError(f"EPTCTL_PROGRESS_INTERVAL must be a number of seconds, got {value!r}",
                          hint="e.g. EPTCTL_PROGRESS_INTERVAL=10, or unset it for 30")
    return seconds


@dataclass
class _Bar:
    """One live bar: a phase or the training run."""

    label: str
    total: int
    unit: str
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    info: str = ""  # loss and speed of training
    left_s: float | None = None  # the latest estimate of the time left
    left_of: str = "left"  # what the estimate covers (training: the evaluations to come too)
    shown: bool = False
    last_line: float = 0.0
    last_tenth: int = 0
    handle: object = None  # the Rich task id

    def estimate(self) -> None:
        """Time left from the rate so far (phases; training sets ``left_s`` itself)."""
        elapsed = time.perf_counter() - self.started
        self.left_s = (self.total - self.done) * elapsed / self.done if self.done and self.total else None

    def line(self) -> str:
        """``final evaluation: test: 320/872 rows (37 %), 41 s, loss 0.41, about 1 min 10 s left``."""
        elapsed = fmt_duration(time.perf_counter() - self.started)
        size = _size(self) + (f" ({100 * self.done // self.total} %)" if self.total else "")
        parts = [size, elapsed] + ([self.info] if self.info else [])
        if self.left_s is not None:
            parts.append(f"about {fmt_duration(self.left_s)} {self.left_of}")
        return f"{self.label}: " + ", ".join(parts)

    def summary(self) -> str:
        """The line a finished bar leaves: ``validation at step 20: 200 rows in 12 s``."""
        took = fmt_duration(time.perf_counter() - self.started)
        return f"{self.label}: {self.done} {self.unit} in {took}" + (f" ({self.info})" if self.info else "")


class _TrainingClock:
    """Times a run's steps (evaluations excluded) and evaluation rows, to re-estimate the whole run's time left."""

    def __init__(self, plan: events.TrainingStarted):
        self.plan = plan
        self.steps: deque[float] = deque(maxlen=25)  # the recent steps: a loaded machine changes the rate
        self.tick = time.perf_counter()
        self.row_s: float | None = None  # measured on the first in-training evaluation

    def stepped(self) -> None:
        now = time.perf_counter()
        self.steps.append(now - self.tick)
        self.tick = now

    def evaluated(self, rows: int, seconds: float) -> None:
        if rows and self.row_s is None:
            self.row_s = seconds / rows
        self.tick = time.perf_counter()

    def per_step(self) -> float | None:
        timed = sorted(list(self.steps)[1:] if len(self.steps) > 1 else self.steps)  # the first carries warm-up
        return timed[len(timed) // 2] if timed else None

    def _evaluations_left(self, step: int) -> int:
        """In-training evaluations after ``step``: the run's own schedule when the event carries it
        (``eval_steps``), else every ``eval_every`` steps and the last step."""
        plan = self.plan
        scheduled = getattr(plan, "eval_steps", None)
        if scheduled:
            return sum(s > step for s in scheduled)
        if not plan.eval_every or step >= plan.total:
            return 0
        return plan.total // plan.eval_every - step // plan.eval_every + (1 if plan.total % plan.eval_every else 0)

    def left(self, step: int) -> tuple[float, int, float] | None:
        """(seconds left, rows still to score, seconds per row), or None before the first step."""
        per_step, plan = self.per_step(), self.plan
        if per_step is None:
            return None
        per_row = self.row_s or EVAL_ROW_SHARE * per_step / max(1, plan.batch_size)
        rows = self._evaluations_left(step) * plan.eval_rows + plan.final_rows
        return (plan.total - step) * per_step + rows * per_row, rows, per_row


class ConsoleProgress:
    """Renders eptctl's events on a console: notes as lines, long phases and training as bars with a time left.

    ``stream``: where to write (default ``sys.stderr``); ``live``: Rich bars (default: when ``stream`` is a
    terminal and no ``logger`` is given); ``interval``: the longest silence, in seconds, of a non-live log while
    something runs; ``delay``: a phase shorter than this many seconds is not shown (``eptctl predict`` on two texts
    says nothing); ``logger``: write the lines with ``logger.info`` instead of to ``stream``. Use it as a context
    manager to install it for every library call in the block and stop the display at the end.
    """

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None, interval: float | None = None,
                 delay: float = 0.0, logger: logging.Logger | None = None):
        self.stream = stream or sys.stderr
        interval = default_interval() if interval is None else interval
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.live = bool(isatty()) and logger is None if live is None else live
        self.interval, self.delay, self.logger = interval, delay, logger
        self._lock = threading.RLock()
        self._bars: dict[str, _Bar] = {}
        self._out = _LiveOutput(self.stream) if self.live else _LineOutput(self.stream, logger)
        self._clock: _TrainingClock | None = None
        self._metric = "accuracy"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._installed: list = []

    # --- the handler ------------------------------------------------------------------------------------------
    def __call__(self, event: events.Event) -> None:
        with self._lock:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event)

    def __enter__(self) -> ConsoleProgress:
        reporting = events.reporting(self)
        reporting.__enter__()
        self._installed.append(reporting)
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        if self._installed:
            self._installed.pop().__exit__(None, None, None)  # only resets the handler: never swallows ``exc``
        return False

    def close(self) -> None:
        """Finish every open bar (its last line stays) and stop the display."""
        with self._lock:
            for key in list(self._bars):  # a bar still open here was cut short (an error, Ctrl-C)
                self._finish(key, ok=False)
            self._out.stop()
            self._stop.set()
            self._beat, self._stop = None, threading.Event()  # a later bar starts a new heartbeat

    # --- bars and lines ---------------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """One line above the bars."""
        with self._lock:
            self._out.note(text)

    def _open(self, key: str, label: str, total: int, unit: str) -> _Bar:
        bar = self._bars[key] = _Bar(label, total, unit)
        if self.delay <= 0:
            self._show(bar)
        self._start_heartbeat()
        return bar

    def _show(self, bar: _Bar) -> None:
        bar.shown, bar.last_line = True, time.perf_counter()
        self._out.open(bar)

    def _update(self, key: str) -> None:
        bar = self._bars.get(key)
        if bar is None:
            return
        if not bar.shown and time.perf_counter() - bar.started >= self.delay:
            self._show(bar)
        if bar.shown:
            self._out.update(bar, self.interval)

    def _finish(self, key: str, ok: bool = True) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None and bar.shown:
            self._out.close(bar, ok)

    def _start_heartbeat(self) -> None:
        if self.live or self._beat is not None or self.interval <= 0:  # 0: a line at every tenth, no heartbeat
            return
        self._beat = threading.Thread(target=self._heartbeat, args=(self._stop,), name="eptctl-progress",
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self, stop: threading.Event) -> None:
        """A line for the innermost bar whenever the log has been silent ``interval`` seconds (a slow batch)."""
        while not stop.wait(max(0.1, min(1.0, self.interval / 4))):
            with self._lock:
                for key in reversed(list(self._bars)):
                    if key != "train":  # a phase's time left grows while it makes no progress
                        self._bars[key].estimate()
                    self._update(key)
                    break

    # --- events -----------------------------------------------------------------------------------------------
    def _on_phase_started(self, event: events.PhaseStarted) -> None:
        self._finish(event.name)
        self._open(event.name, event.name, event.total, event.unit)

    def _on_phase_advanced(self, event: events.PhaseAdvanced) -> None:
        bar = self._bars.get(event.name)
        if bar is not None:
            bar.done, bar.total = event.done, event.total
            bar.estimate()
            self._update(event.name)

    def _on_phase_done(self, event: events.PhaseDone) -> None:
        bar = self._bars.get(event.name)
        if bar is None:
            return
        bar.done = event.done
        if self._clock is not None and "train" in self._bars:  # an in-training evaluation: time it
            self._clock.evaluated(event.done, event.seconds)
        self._finish(event.name, event.ok)

    def _on_training_started(self, event: events.TrainingStarted) -> None:
        p = event.params
        self.note(f"trainable parameters: {p['total']:,} (" + ", ".join(
            f"{k} {v:,}" for k, v in p.items() if k != "total" and v) + ")")
        self._clock = _TrainingClock(event)
        bar = self._open("train", "train", event.total, "steps")
        bar.done, bar.left_of = event.step, "left in all, evaluations included"

    def _on_step(self, event: events.StepDone) -> None:
        bar, clock = self._bars.get("train"), self._clock
        if bar is None or clock is None:
            return
        clock.stepped()
        bar.done = event.step
        left = clock.left(event.step)
        per_step = clock.per_step()
        # the loss is read from the device every few steps (no per-step sync): say which step's it is
        of = f" (step {event.loss_step})" if event.loss_step not in (None, event.step) else ""
        bar.info = f"loss {event.loss:.4f}{of}" + (f", {per_step:.2f} s/step" if per_step else "")
        bar.left_s = None if left is None else left[0]
        if len(clock.steps) == 4 and left is not None:  # the first step carries warm-up: 3 more, then a plan
            seconds, rows, per_row = left
            how = "measured" if clock.row_s else "estimated"
            self.note(f"about {fmt_duration(seconds)} left: {clock.plan.total - event.step} steps at "
                      f"{per_step:.1f} s, then scoring {rows:,} rows at {per_row * 1000:.0f} ms each ({how}); "
                      "re-estimated as the run goes")
        self._update("train")

    def _on_evaluated(self, event: events.Evaluated) -> None:
        picks = self._clock is None or self._clock.plan.eval_every  # without --eval-every: a curve, the last kept
        kept = f"best step {event.best_step}" if picks else "for the curve; the last step is kept"
        self.note(f"step {event.step}/{event.total}: validation {fmt_metrics(event.metrics, self._metric, limit=2)} "
                  f"on {event.examples} rows ({kept}; the final evaluation uses every validation row)")

    def _on_final(self, event: events.FinalEvaluation) -> None:
        self._finish("train")
        self._clock = None
        self.note(f"evaluating the kept checkpoint (step {event.best_step}) on validation and test…")

    def _on_data(self, event: events.DataLoaded) -> None:
        self._metric = event.metric
        sizes = event.sizes
        self.note(f"task {event.task}: {sizes.get('train', 0)} train / {sizes.get('validation', 0)} validation / "
                  f"{sizes.get('test', 0)} test examples")


def _sources_line(event: events.SourcesChosen) -> str:
    return "auto-selected sources: " + ", ".join(
        f"{r.get('ref', r['id'][:8])}" + (f" (shared answers {r['shared_answers']:.0%}, probe {r['probe_metric']} "
                                          f"{r['probe_score']:.3f})" if "probe_score" in r else "")
        for r in event.ranked)


# Events that are one line each: the text they print.
_LINES = {
    events.Note: lambda e: f"note: {e.text}",
    events.LoadingModel: lambda e: f"loading {e.model}…",
    events.Resumed: lambda e: f"resumed at step {e.step} of {e.total}",
    events.SourcesChosen: _sources_line,
    events.FusedInit: lambda e: "initialised from " + ", ".join(f"{ref}×{w:.2f}" for ref, w in e.parents),
    events.AttentionInit: lambda e: "attention over the frozen prompts of " + ", ".join(e.sources),
    events.StageStarted: lambda e: f"stage {e.stage + 1}: {e.task}" + (
        f" from {', '.join(e.init_from)}" if e.init_from else " (random init)"),
}
_HANDLERS = {
    **{kind: (lambda text: lambda self, event: self.note(text(event)))(text) for kind, text in _LINES.items()},
    events.DataLoaded: ConsoleProgress._on_data,
    events.TrainingStarted: ConsoleProgress._on_training_started,
    events.StepDone: ConsoleProgress._on_step,
    events.Evaluated: ConsoleProgress._on_evaluated,
    events.FinalEvaluation: ConsoleProgress._on_final,
    events.PhaseStarted: ConsoleProgress._on_phase_started,
    events.PhaseAdvanced: ConsoleProgress._on_phase_advanced,
    events.PhaseDone: ConsoleProgress._on_phase_done,
}


class _LineOutput:
    """Plain lines for logs: a phase's start and end, each tenth of it (at most one line per tenth of ``interval``:
    a phase of a few seconds shows its start and end only), and a line after ``interval`` of silence."""

    def __init__(self, stream: TextIO, logger: logging.Logger | None):
        self.stream, self.logger = stream, logger

    def note(self, text: str) -> None:
        if self.logger is not None:
            self.logger.info(text)
            return
        self.stream.write(text + "\n")
        self.stream.flush()  # in order with everything else written to the stream, even when it is a pipe

    def open(self, bar: _Bar) -> None:
        self.note(f"{bar.label}: {bar.total} {bar.unit}…" if bar.total else f"{bar.label}…")

    def update(self, bar: _Bar, interval: float) -> None:
        now = time.perf_counter()
        tenth = 10 * bar.done // bar.total if bar.total else 0
        quiet_for = now - bar.last_line
        milestone = tenth > bar.last_tenth and bar.done < bar.total and quiet_for >= interval / 10
        if milestone or 0 < interval <= quiet_for:
            bar.last_tenth, bar.last_line = max(tenth, bar.last_tenth), now
            self.note(bar.line())

    def close(self, bar: _Bar, ok: bool) -> None:
        self.note(bar.summary() if ok else f"{bar.label}: stopped after {bar.done} {bar.unit}")

    def stop(self) -> None:
        pass


def _size(bar: _Bar) -> str:
    return f"{bar.done}/{bar.total} {bar.unit}" if bar.total else f"{bar.done} {bar.unit}"


class _LiveOutput:
    """Rich bars on a terminal, one Live display while any bar runs; a finished bar leaves its summary line."""

    def __init__(self, stream: TextIO):
        from rich.console import Console

        self.console = Console(file=stream, highlight=False)
        self.progress = None

    def _progress(self):
        if self.progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.fields[size]}"), TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"), TextColumn("{task.fields[left]}"),
                console=self.console, transient=True)
            self.progress.start()
        return self.progress

    def note(self, text: str) -> None:
        self.console.print(text, markup=False)

    def open(self, bar: _Bar) -> None:
        bar.handle = self._progress().add_task(bar.label, total=bar.total or None, completed=bar.done,
                                               size=_size(bar), info="", left="")

    def update(self, bar: _Bar, interval: float) -> None:
        left = "" if bar.left_s is None else f"about {fmt_duration(bar.left_s)} {bar.left_of}"
        self._progress().update(bar.handle, completed=bar.done, total=bar.total or None, size=_size(bar),
                                info=bar.info, left=left)

    def close(self, bar: _Bar, ok: bool) -> None:
        progress = self._progress()
        progress.remove_task(bar.handle)
        self.note(bar.summary() if ok else f"{bar.label}: stopped after {bar.done} {bar.unit}")
        if not progress.tasks:
            self.stop()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
