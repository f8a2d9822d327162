"""``eptctl train``: train an EPT (or PT/DePT) prompt for a task and register it."""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated

import typer

from eptctl.backbones import DEFAULT_MODEL
from eptctl.cli.common import (
    DataDirOption, LabelColumnOption, RegistryUrl, TextColumnOption, TextPairColumnOption, console_progress, err,
    fmt_count, fmt_metric, open_registry, print_json,
)
from eptctl.cli.options import with_config_options
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
    with console_progress(enabled=not as_json and distributed.is_main()) as reporter:
        outcome = _train_with_progress(
            task, open_registry(registry), method_cfg, train_cfg, reporter=reporter, resume=resume, custom=custom,
            transfer=transfer, limits=DataLimits(max_train, max_eval, train_examples),
            loading=_model_choice(model, precision, trust_remote_code),
            record=RecordInfo(description, tuple(tag or ()), recorded_command_line(sys.argv)))
    if distributed.is_main():
        _report(outcome, as_json, command_started)


def _train_with_progress(task: str, reg, method_cfg: EPTConfig, train_cfg: TrainConfig, *, reporter,
                         resume: bool, **options):
    """``train_task`` reporting to ``reporter`` (the CLI's ``ConsoleProgress``; None with ``--json`` and on ranks
    other than 0) and Ctrl-C as a clean stop (exit 130)."""
    from eptctl.workflows.train import RunOptions, train_task

    leader = distributed.is_main()
    stop = _StopFlag()
    try:
        with stop:
            return train_task(task, registry=reg, method_cfg=method_cfg, train_cfg=train_cfg,
                              run=RunOptions(resume, reporter, stop.is_set), **options)
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
