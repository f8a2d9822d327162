"""``eptctl train``: train an EPT (or PT/DePT) prompt for a task and register it."""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from eptctl.backbones import DEFAULT_MODEL
from eptctl.cli.common import (
    DataDirOption, LabelColumnOption, RegistryUrl, TextColumnOption, TextPairColumnOption, err, fmt_count, fmt_metric, fmt_metrics,
    open_registry, print_json,
)
from eptctl.cli.options import with_config_options
from eptctl.core import events
from eptctl.core.errors import TrainingInterrupted
from eptctl.core.limits import ROWS_MAX, SCALE_MAX
from eptctl.core.secrets import recorded_command_line
from eptctl.engine import distributed
from eptctl.engine.config import TrainConfig
from eptctl.methods.config import EPTConfig

DATA = "Custom data"
TRANSFER = "Transfer"


# The flags of `eptctl train` that are not config fields (those come from the configs), as option types.
_Task = Annotated[str, typer.Argument(
    help="Builtin task (see `eptctl tasks`), a stored task, or a new name with --data.")]
_Model = Annotated[str, typer.Option(help="Backbone: embedded name, local folder or hub id.")]
_MaxTrain = Annotated[int | None, typer.Option(
    help="Use at most N training examples.", min=1, max=ROWS_MAX, rich_help_panel="Optimisation")]
_MaxEval = Annotated[int | None, typer.Option(
    help="Use at most N validation and N test examples.", min=1, max=ROWS_MAX, rich_help_panel="Optimisation")]
_TrainExamples = Annotated[int | None, typer.Option(
    help="Few-shot: train on K examples, stratified by label and the same for every seed (recorded with the run).",
    min=1, max=ROWS_MAX, rich_help_panel="Optimisation")]
_Data = Annotated[str | None, typer.Option(
    "--data", help="CSV/TSV/JSONL/Parquet file or folder: defines a custom task.", rich_help_panel=DATA)]
_Template = Annotated[str | None, typer.Option(
    help="Prompt template with {text} (and {text_pair}), or naming the file's columns: "
         "'premise: {premise} hypothesis: {hypothesis}'.", rich_help_panel=DATA)]
_Hub = Annotated[bool, typer.Option(
    "--hub", help="Allow --data to name a hub dataset (needs network).", rich_help_panel=DATA)]
_Grid = Annotated[float | None, typer.Option(
    help="Regression on decoder backbones: round targets to multiples of this (default 0.2).", min=1e-6, max=SCALE_MAX,
    rich_help_panel=DATA)]
_Metric = Annotated[str | None, typer.Option(
    help="Primary metric of a new task (picks the best step, @best, list --sort); default by task type: accuracy, "
         "rouge_l, pearson.", rich_help_panel=DATA)]
_InitFrom = Annotated[str | None, typer.Option(
    help="Start from a fusion of stored adapters: REF[:W],REF[:W] or auto.", rich_help_panel=TRANSFER)]
_TransferMode = Annotated[str, typer.Option(
    help="weighted: start from the weighted sum of the sources' components; attention: learn an attention mixture "
         "over their frozen prompts (ATTEMPT-style).", rich_help_panel=TRANSFER)]
_TransferComponents = Annotated[str, typer.Option(
    help="weighted mode: what to take from the sources: prompt | prompt+low-rank | all (the rest starts fresh).",
    rich_help_panel=TRANSFER)]
_TopK = Annotated[int, typer.Option(
    help="With --init-from auto: fuse the K best sources.", min=1, max=ROWS_MAX, rich_help_panel=TRANSFER)]
_Probe = Annotated[int, typer.Option(
    help="With --init-from auto: rank sources by shared answer words, then by zero-step score on N validation "
         "examples.", min=1, max=ROWS_MAX, rich_help_panel=TRANSFER)]
_Resume = Annotated[bool, typer.Option("--resume", help="Continue the interrupted run with the same options.")]
_Description = Annotated[str, typer.Option(help="Free text stored with the adapter.")]
_Tag = Annotated[list[str] | None, typer.Option("--tag", help="Tag the adapter (repeatable).")]
_Precision = Annotated[str | None, typer.Option(help="fp32 | bf16 backbone weights (default: bf16 where faster).")]
_TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow custom model code from the hub.")]
_AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object with ref and metrics.")]


@with_config_options(method_cfg=(EPTConfig, "Method (adapter shape)"), train_cfg=(TrainConfig, "Optimisation"))
def train(
    task: _Task,
    model: _Model = DEFAULT_MODEL,
    method_cfg: EPTConfig = None,  # replaced by the EPTConfig flags
    train_cfg: TrainConfig = None,  # replaced by the TrainConfig flags
    max_train: _MaxTrain = None, max_eval: _MaxEval = None, train_examples: _TrainExamples = None,
    data: _Data = None, text_column: TextColumnOption = "text", text_pair_column: TextPairColumnOption = None,
    label_column: LabelColumnOption = None, template: _Template = None, hub: _Hub = False,
    task_type: Annotated[str, typer.Option(help="classification (labels) | generation (target text) | regression (a number).", rich_help_panel=DATA)] = "classification",
    grid: _Grid = None, metric: _Metric = None,
    init_from: _InitFrom = None, transfer_mode: _TransferMode = "weighted",
    transfer_components: _TransferComponents = "prompt+low-rank", top_k: _TopK = 1, probe: _Probe = 64,
    resume: _Resume = False, description: _Description = "", tag: _Tag = None, precision: _Precision = None,
    trust_remote_code: _TrustRemoteCode = False, data_dir: DataDirOption = None, registry: RegistryUrl = None,
    as_json: _AsJson = False,
) -> None:
    """Train a prompt for TASK on a frozen backbone and register it.

    Example: eptctl train rt-polarity --method ept --steps 90

    Example: eptctl train reviews --data reviews.csv --text-column body --label-column stars

    Example: eptctl train rt-subjectivity --init-from rt-polarity@best

    Example: eptctl train summaries --data pairs.csv --task-type generation --text-column input --target-column output

    Example: eptctl train superglue-cb --model ./t5-base --data-dir ~/glue-data
    """
    command_started = time.perf_counter()  # the wall time the user waits: load and conversion included
    from eptctl.workflows.train import DataChoice, DataLimits, RecordInfo

    custom = DataChoice(data, text_column, text_pair_column, label_column, template, hub, task_type, metric,
                        grid).options()
    transfer = _transfer_options(init_from, transfer_mode, transfer_components, top_k, probe)
    distributed.init()  # under torchrun / accelerate launch: one rank of a data-parallel run; rank 0 prints
    outcome = _train_with_progress(
        task, open_registry(registry), method_cfg, train_cfg, quiet=as_json, resume=resume, custom=custom,
        transfer=transfer, limits=DataLimits(max_train, max_eval, train_examples),
        loading=_model_choice(model, precision, trust_remote_code),
        record=RecordInfo(description, tuple(tag or ()), recorded_command_line(sys.argv)))
    if distributed.is_main():
        _report(outcome, as_json, command_started)


def _train_with_progress(task: str, reg, method_cfg: EPTConfig, train_cfg: TrainConfig, *, quiet: bool,
                         resume: bool, **options):
    """``train_task`` with the progress view on stderr (rank 0 only) and Ctrl-C as a clean stop (exit 130)."""
    from eptctl.workflows.train import RunOptions, train_task

    leader = distributed.is_main()
    stop = _StopFlag()
    view = _ProgressView(quiet=quiet or not leader)
    try:
        with stop, view:
            return train_task(task, registry=reg, method_cfg=method_cfg, train_cfg=train_cfg,
                              run=RunOptions(resume, view.on_event, stop.is_set), **options)
    except TrainingInterrupted as interrupted:
        if leader:
            err.print(f"[yellow]interrupted:[/] {interrupted.message}; {interrupted.hint}")
        raise typer.Exit(130) from None


def _transfer_options(init_from: str | None, mode: str, components: str, top_k: int, probe: int):
    """``--init-from`` and its options as ``TransferOptions`` (None: a fresh start)."""
    from eptctl.workflows.transfer import TransferOptions, parse_sources

    return None if init_from is None else TransferOptions(
        "auto" if init_from == "auto" else parse_sources(init_from), mode, top_k, probe, components)


def _model_choice(model: str, precision: str | None, trust_remote_code: bool):
    """``--model``; with ``--precision`` the command loads the backbone itself in that precision."""
    from eptctl import backbones
    from eptctl.workflows.train import ModelChoice

    backbone = None
    if precision is not None:
        with distributed.main_first():
            backbone = backbones.load(model, precision=precision, trust_remote_code=trust_remote_code)
    return ModelChoice(model, backbone, trust_remote_code)


def _report(outcome, as_json: bool, command_started: float) -> None:
    """The result: one JSON object, or a summary line on stderr and the registered reference on stdout."""
    rec = outcome.record
    if as_json:
        print_json({"ref": rec.ref, "id": rec.id, "task": rec.task, "method": rec.method,
                    "metrics": outcome.result.metrics, "params_by_group": rec.params_by_group,
                    "trainable_params": rec.trainable_params, "best_step": outcome.result.best_step,
                    "duration_s": round(outcome.result.duration_s, 2),
                    "wall_s": round(time.perf_counter() - command_started, 2)})
        return
    test = outcome.result.metrics.get("test", {})
    val = outcome.result.metrics.get("validation", {})
    name = outcome.spec.metric
    kept = "best step" if outcome.result.best_step < outcome.result.steps else "step"
    err.print(f"{kept} {outcome.result.best_step}: validation {name} {fmt_metric(val.get(name))}, "
              f"test {name} {fmt_metric(test.get(name))}; {fmt_count(rec.trainable_params)} trainable "
              f"parameters; {time.perf_counter() - command_started:.0f} s in all")
    typer.echo(f"registered {rec.ref} ({rec.id[:8]})")


class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self):
        self._set = False
        self._previous = None

    def is_set(self) -> bool:
        return self._set

    def _handle(self, signum, frame):
        if self._set:
            raise KeyboardInterrupt
        self._set = True
        err.print("[yellow]stopping after this step (Ctrl-C again to abort)…[/]")

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread (e.g. under a test runner thread): no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class _ProgressView:
    """Renders training events on stderr: a progress bar with loss, steps/s and ETA, and one line per eval."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} steps/s"),
            TimeRemainingColumn(), console=err, disable=quiet, transient=False,
        )
        self.task_id = None
        self.started = None
        self.first_step = 0
        self.live = False  # the bar starts with training: an error before it stays one line
        self.metric = "accuracy"
        self.plan: events.TrainingStarted | None = None
        self.step_seconds: list[float] = []  # wall time of each step (evaluations excluded)
        self.last_tick = None
        self.eval_row_seconds = None  # measured at the first in-training evaluation
        self.eta_notes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.live else False

    def _eta(self, step: int) -> None:
        """One line: the time left for the steps and every evaluation still to come (in-training and final).

        Per-step time is the median of the steps so far (evaluations excluded). Until an evaluation has been timed,
        scoring a row is taken as 0.45 of a training row's share of a step: forward only, no input gradients
        (measured 0.085 s against 3.0 s / 16 for SmolLM2 on a 2-core CPU in fp32)."""
        plan = self.plan
        if plan is None or self.quiet:
            return
        per_step = sorted(self.step_seconds[1:])[len(self.step_seconds[1:]) // 2]
        per_row = self.eval_row_seconds or 0.45 * per_step / max(1, plan.batch_size)
        left_steps = plan.total - step
        left_evals = sum(s > step for s in plan.eval_steps)
        seconds = left_steps * per_step + (left_evals * plan.eval_rows + plan.final_rows) * per_row
        how = "measured" if self.eval_row_seconds else "estimated"
        self.progress.console.print(
            f"about {_duration(seconds)} left: {left_steps} steps at {per_step:.1f} s, then scoring "
            f"{left_evals * plan.eval_rows + plan.final_rows:,} rows at {per_row * 1000:.0f} ms each ({how})")
        self.eta_notes += 1

    def note(self, text: str) -> None:
        if not self.quiet:
            err.print(text)

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.DataLoaded):
            self.metric = event.metric
            sizes = event.sizes
            self.note(f"task {event.task}: {sizes['train']} train / {sizes['validation']} validation / "
                      f"{sizes['test']} test examples")
        elif isinstance(event, events.Note):
            self.note(f"note: {event.text}")
        elif isinstance(event, events.LoadingModel):
            self.note(f"loading {event.model}" + (" (first use: converting it once, about 20 s)…" if event.converting
                                                  else "…"))
        elif isinstance(event, events.Resumed):
            self.note(f"resumed at step {event.step} of {event.total}")
        elif isinstance(event, events.TrainingStarted):
            p = event.params
            self.note(f"trainable parameters: {p['total']:,} (" + ", ".join(
                f"{k} {v:,}" for k, v in p.items() if k != "total" and v) + ")")
            self.started, self.first_step = time.perf_counter(), event.step
            self.plan, self.last_tick = event, self.started
            self.progress.__enter__()
            self.live = True
            self.task_id = self.progress.add_task("train", total=event.total, completed=event.step,
                                                  loss="-", rate="-")
        elif isinstance(event, events.StepDone) and self.task_id is not None:
            elapsed = time.perf_counter() - self.started
            rate = (event.step - self.first_step) / elapsed if elapsed > 0 else 0.0
            self.progress.update(self.task_id, completed=event.step, loss=f"{event.loss:.4f}", rate=f"{rate:.2f}")
            now = time.perf_counter()
            self.step_seconds.append(now - self.last_tick)
            self.last_tick = now
            if len(self.step_seconds) == 4 and self.eta_notes == 0:  # the first step carries warm-up: 3 more
                self._eta(event.step)
        elif isinstance(event, events.Evaluated) and not self.quiet:
            now = time.perf_counter()
            if self.eval_row_seconds is None and event.examples:
                self.eval_row_seconds = (now - self.last_tick) / event.examples
                if self.eta_notes == 1:
                    self._eta(event.step)
            self.last_tick = now
            m = event.metrics
            self.progress.console.print(
                f"step {event.step}/{event.total}: validation {fmt_metrics(m, self.metric, limit=2)} on "
                f"{event.examples} rows (" + (f"best step {event.best_step}" if self.plan and self.plan.eval_every
                                              else "for the curve; the last step is kept")
                + "; the final evaluation uses every validation row)")
        elif isinstance(event, events.SourcesChosen):
            self.note("auto-selected sources: " + ", ".join(
                f"{r.get('ref', r['id'][:8])}" + (f" (shared answers {r['shared_answers']:.0%}, probe {r['probe_metric']} "
                                                  f"{r['probe_score']:.3f})" if "probe_score" in r else "")
                for r in event.ranked))
        elif isinstance(event, events.FusedInit):
            self.note("initialised from " + ", ".join(f"{ref}×{w:.2f}" for ref, w in event.parents))
        elif isinstance(event, events.AttentionInit):
            self.note("attention over the frozen prompts of " + ", ".join(event.sources))
        elif isinstance(event, events.FinalEvaluation):
            self.note(f"evaluating the kept checkpoint (step {event.best_step}) on validation and test…")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
