"""Train a task and register the adapter: the library call behind ``eptctl train``.

Order matters for "bad input loses nothing": everything a user can get wrong (task, data, columns, labels, config,
backbone, transfer sources) is checked before the registry is written, and the registry is written once, at the end.
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from eptctl import __version__, backbones, data
from eptctl.backbones.base import Backbone
from eptctl.core import events
from eptctl.core.errors import ConfigError, EptctlError
from eptctl.core.files import read_only_reason
from eptctl.core.home import eptctl_home
from eptctl.core.progress import ConsoleProgress
from eptctl.data.task_types import DEFAULT_TASK_TYPE, TASK_TYPES
from eptctl.data.task_types import task_type as task_type_of
from eptctl.engine import distributed, servable, training_state
from eptctl.engine.config import TrainConfig, split_options
from eptctl.engine.encoding import EncodedTask, encode_task, new_token_budget
from eptctl.engine.loop import FitRun, FitTask, TrainResult, fit
from eptctl.engine.metrics import check_metric
from eptctl.methods import EPTConfig, prompt_length_of
from eptctl.workflows.tasks import resolve_spec, spec_to_task_record
from eptctl.workflows.transfer import TransferOptions, TransferStart, prepare_transfer

PACKAGES = ("torch", "transformers", "datasets", "safetensors", "sqlalchemy")


@dataclass
class TrainOutcome:
    """What :func:`train_task` returns: the registry record (None on ranks other than 0) and the training result."""

    record: object  # registry.AdapterRecord
    result: TrainResult
    spec: data.TaskSpec
    extra: dict = field(default_factory=dict)


# --- fingerprints and run metadata ---------------------------------------------------------------------------------
def backbone_fingerprint(backbone: Backbone, max_length: int):
    """The registry's ``BackboneFingerprint`` of ``backbone`` for an adapter of ``max_length`` tokens."""
    from registry import BackboneFingerprint

    fp = backbone.fingerprint(max_length)
    return BackboneFingerprint(name=fp["name"], revision=fp["revision"], embedding_sha256=fp["embedding_sha256"],
                               tokenizer_sha256=fp["tokenizer_sha256"], width=fp["width"], max_length=max_length)


def package_versions() -> dict[str, str]:
    """Versions of eptctl, Python and the packages that decide a run's numbers."""
    import importlib.metadata

    versions = {"eptctl": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def run_key(task: str, fingerprint: str, model: str, method_cfg: EPTConfig, train_cfg: TrainConfig) -> str:
    """Identifies one training run's inputs, so ``--resume`` finds the checkpoint of the same run."""
    blob = json.dumps([task, fingerprint, model, method_cfg.to_dict(), train_cfg.to_dict()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(key: str) -> Path:
    """Where an unfinished run keeps its resumable training state."""
    return eptctl_home() / "runs" / f"{key}.safetensors"


def check_task_fits(spec: data.TaskSpec, backbone: Backbone | None, train_cfg: TrainConfig) -> None:
    """Refuse (``EptctlError``) a task the backbone or the options cannot train: generation on an encoder-only model,
    ``--objective classify`` without labels, a primary metric the task type does not have. Without a ``backbone``
    (before loading one) only the options are checked."""
    check_metric(spec.task_type, spec.metric)
    if backbone is not None and spec.strategy.decodes_text and not backbone.can_generate:
        raise EptctlError(f"task '{spec.name}' generates text, but {backbone.name} is an encoder-only model",
                          hint="use a causal or seq2seq backbone (e.g. the default model) for generation tasks")
    if not spec.strategy.has_labels and train_cfg.objective == "classify":
        raise EptctlError(f"--objective classify needs labels; task '{spec.name}' is a {spec.task_type} task",
                          hint="use --objective lm")


# --- grouped options ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataLimits:
    """Which rows a run uses: at most ``max_train`` training rows, ``max_eval`` validation and test rows each, and
    (few-shot) ``train_examples`` training rows stratified by label, the same for every seed. None: no limit.
    Raises ``ConfigError`` naming the flag for a limit below 1."""

    max_train: int | None = None
    max_eval: int | None = None
    train_examples: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_train", "max_eval", "train_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}",
                                  hint="leave it out to use every row")


@dataclass(frozen=True)
class ModelChoice:
    """The frozen backbone: ``model`` (embedded name, local folder or hub id), or an already loaded ``backbone`` (it
    is used as is; ``model`` then only names it in the run summary); ``trust_remote_code`` allows custom model code
    from the hub when ``model`` is loaded."""

    model: str = backbones.DEFAULT_MODEL
    backbone: Backbone | None = None
    trust_remote_code: bool = False

    def load(self, emit: events.EventHandler) -> Backbone:
        """The backbone to train on: ``backbone``, or ``model`` loaded (first use converts it once, on rank 0)."""
        if self.backbone is not None:
            return self.backbone
        emit(events.LoadingModel(model=self.model, converting=backbones.needs_conversion(self.model)))
        with distributed.main_first():  # a first use converts the model into a shared cache: once, by rank 0
            return backbones.load(self.model, trust_remote_code=self.trust_remote_code)


@dataclass(frozen=True)
class RunOptions:
    """How a run is driven: ``resume`` continues the interrupted run with the same inputs (``EptctlError`` if there
    is none), ``on_event`` receives the typed progress events (default: the handler a ``with ConsoleProgress():``
    block installed), the run stops with a clean checkpoint (``TrainingInterrupted``) when ``should_stop()`` turns
    true, and ``progress=True`` prints progress on stderr with :class:`eptctl.core.progress.ConsoleProgress` (live bars
    on a terminal, periodic lines in a log) besides ``on_event``."""

    resume: bool = False
    on_event: events.EventHandler | None = None
    should_stop: Callable[[], bool] | None = None
    progress: bool = False

    def handler(self) -> tuple[events.EventHandler, ConsoleProgress | None]:
        """The run's event handler, and the reporter ``progress=True`` adds to it (the caller closes it)."""
        reporter = ConsoleProgress() if self.progress and distributed.is_main() else None  # one rank prints
        return events.tee(self.on_event or events.current(), reporter), reporter


@dataclass(frozen=True)
class RecordInfo:
    """What the registry stores about the run besides its results: free-text ``description``, ``tags``, and the
    ``command_line`` (default: this process's ``sys.argv``)."""

    description: str = ""
    tags: tuple[str, ...] = ()
    command_line: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags or ()))  # a list from older callers; None: no tags


# train_task's keyword groups: a group by its name (run=RunOptions(...)) or its fields one by one (resume=True).
TRAIN_OPTIONS = {"limits": DataLimits, "loading": ModelChoice, "run": RunOptions, "record": RecordInfo}


@dataclass(frozen=True)
class DataChoice:
    """The data a run asks for, as the "Custom data" options give it: a custom task's file (``path``: ``--data``)
    with its columns, template, task type, metric and grid, or (``path`` None) nothing beyond a builtin or stored task.

    Checked on construction: the task type exists, the options that describe a file come with ``path``, ``grid``
    only for regression. Raises ``EptctlError`` (one line naming the flags, and a hint).
    """

    path: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str | None = None  # None: the task type's default (label, or target)
    template: str | None = None
    hub: bool = False
    task_type: str = data.DataOptions.task_type
    metric: str | None = None
    grid: float | None = None

    def __post_init__(self) -> None:
        task_type, grid = self.task_type, self.grid
        if task_type not in TASK_TYPES:
            raise EptctlError(f"--task-type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}",
                              hint="e.g. --task-type generation")
        given = (("--template", self.template is not None), ("--text-column", self.text_column != "text"),
                 ("--text-pair-column", self.text_pair_column is not None),
                 ("--label-column", self.label_column is not None), ("--hub", self.hub))
        data_flags = [flag for flag, is_given in given if is_given]
        if self.path is None and data_flags:
            raise EptctlError(f"{', '.join(data_flags)} describe a custom task's data file and need --data",
                              hint="a builtin or stored task keeps its columns and template (see `eptctl tasks`)")
        if self.path is None and (task_type != DEFAULT_TASK_TYPE or self.metric is not None or grid is not None):
            raise EptctlError("--task-type, --metric and --grid define a new task and need --data",
                              hint="a builtin or stored task keeps its type and metric (see `eptctl tasks`)")
        if grid is not None and not task_type_of(task_type).uses_grid:
            raise EptctlError(f"--grid applies to regression tasks, not {task_type}", hint="drop --grid")

    def options(self) -> data.DataOptions | None:
        """The custom task's ``DataOptions`` (the label column defaulted by task type), or None without ``path``."""
        if self.path is None:
            return None
        column, task_type = self.label_column, self.task_type
        label_column = column or task_type_of(task_type).answer_column
        return data.DataOptions(self.path, self.text_column, self.text_pair_column, label_column, self.template,
                                self.hub, task_type, self.metric, self.grid)


# --- train ----------------------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """A run's inputs once everything a user can get wrong has been checked, before training."""

    spec: data.TaskSpec
    task_data: data.TaskData
    backbone: Backbone
    method_cfg: EPTConfig
    train_cfg: TrainConfig
    encoded: EncodedTask
    new_tokens: int
    start: TransferStart


def train_task(
    task: str,
    *,
    registry,
    method_cfg: EPTConfig = EPTConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    custom: data.DataOptions | None = None,
    transfer: TransferOptions | None = None,
    **options,
) -> TrainOutcome:
    """Train an adapter for ``task`` and register it; returns the registry record and the training result.

    ``custom`` defines a new task from the user's data (:meth:`DataChoice.options` builds it from the CLI's
    options); ``transfer`` starts from stored adapters. ``options`` are the keyword groups of ``TRAIN_OPTIONS``,
    each given whole or field by field: ``limits`` (:class:`DataLimits`: ``max_train``, ``max_eval``,
    ``train_examples``, few-shot K examples stratified by label, recorded in the summary), ``loading``
    (:class:`ModelChoice`: ``model``, ``backbone``, ``trust_remote_code``), ``run`` (:class:`RunOptions`:
    ``resume``, ``on_event``, ``should_stop``, ``progress``: True prints live progress on stderr) and ``record``
    (:class:`RecordInfo`: ``description``, ``tags``, ``command_line``). Raises ``TypeError`` for an unknown keyword, ``EptctlError`` for anything a user can get
    wrong, before the registry is written, and ``TrainingInterrupted`` after a clean checkpoint when
    ``should_stop()`` turns true. Under ``torchrun`` / ``accelerate launch`` every rank calls this: the ranks train
    data-parallel, rank 0 alone registers, and the other ranks get ``record=None`` (docs/distributed.md).
    """
    groups = split_options(options, TRAIN_OPTIONS, "train_task")
    distributed.init()  # under a launcher: join the group first, so that only rank 0 prints
    emit, reporter = groups["run"].handler()
    try:
        with events.reporting(emit):  # model conversion and scoring phases report to the run's handler too
            return _train(task, registry, method_cfg, train_cfg, custom, transfer, groups, emit)
    finally:
        if reporter is not None:
            reporter.close()


def _train(task: str, registry, method_cfg: EPTConfig, train_cfg: TrainConfig, custom: data.DataOptions | None,
           transfer: TransferOptions | None, groups: dict, emit: events.EventHandler) -> TrainOutcome:
    """:func:`train_task` once its options are grouped and its events have a handler."""
    from registry import ArtifactWriteError

    run: RunOptions = groups["run"]
    if distributed.is_main():
        _check_can_store(registry)  # a read-only registry or home fails now, not after the whole training budget
    p = _prepare(task, registry, method_cfg, train_cfg, custom, transfer, groups, emit)
    key = run_key(p.spec.name, p.task_data.fingerprint, p.backbone.fingerprint()["embedding_sha256"], p.method_cfg,
                  p.train_cfg)
    ckpt = checkpoint_path(key)
    if run.resume and not distributed.from_rank0(ckpt.exists):  # rank 0 holds the checkpoint
        raise EptctlError(f"no checkpoint to resume for this run (key {key})",
                          hint="resume needs the same task, data, model and options as the interrupted run")
    result = fit(p.backbone, p.encoded.train, p.encoded.validation, p.encoded.answers, p.method_cfg, p.train_cfg,
                 task=FitTask.of(p.spec, p.new_tokens, test_set=p.encoded.test, stop=_default_stop(p)),
                 run=FitRun(init_tensors=p.start.init_tensors, checkpoint_path=ckpt, resume=run.resume,
                            on_event=emit, should_stop=run.should_stop))
    if not distributed.is_main():  # every rank holds the same adapter; one registration is enough
        return TrainOutcome(record=None, result=result, spec=p.spec)
    materialized = result.adapter.materialize()
    summary = _summary(p, result, materialized.gate, transfer, groups)
    try:
        record = _register(registry, p, result, materialized, summary, groups["record"])
    except ArtifactWriteError as err:  # a full disk: keep the trained weights where --resume finds them
        raise _kept_for_resume(err, ckpt, result, groups["record"]) from None
    ckpt.unlink(missing_ok=True)  # the run is complete; its final state now lives in the registry
    return TrainOutcome(record=record, result=result, spec=p.spec)


def _check_can_store(registry) -> None:
    """Raise ``EptctlError`` if this run could not store its result: the registry (database or artifact root) or
    the folder of the run's checkpoints is read-only."""
    registry.check_writable()
    runs = checkpoint_path("probe").parent
    reason = read_only_reason(runs)
    if reason:
        raise EptctlError(f"cannot keep this run's checkpoints in {runs}: {reason}",
                          hint="set $EPTCTL_HOME to a writable folder (reads of a read-only registry work as they are)")


def _kept_for_resume(err: EptctlError, ckpt: Path, result: TrainResult, info: RecordInfo) -> EptctlError:
    """The error of a registration that could not write its files: the final training state is saved as the run's
    checkpoint, so that ``--resume`` registers it without training again; the hint names that command."""
    try:
        training_state.save(ckpt, result.state)
    except OSError as save_err:
        return EptctlError(f"{err.message}; the trained weights are lost: their checkpoint {ckpt} could not be "
                           f"written either ({save_err.strerror})", hint=err.hint)
    line = info.command_line
    again = (f"`{line}`" if line and "--resume" in line.split() else f"`{line} --resume`" if line
             else "the same train_task call with resume=True")
    return EptctlError(err.message, hint=f"free space there (or point $EPTCTL_ARTIFACTS at a folder with room), then "
                                         f"run {again}: it registers the trained weights kept in {ckpt} without "
                                         "training again")


def compile_backbone(backbone: Backbone) -> None:
    """``--compile``: ``torch.compile`` in place the modules the backbone calls itself (the layer stack
    ``model.base_model``, and a seq2seq model's encoder), so every training step, scoring pass and generation runs
    them compiled. On CUDA mode ``reduce-overhead`` (CUDA graphs), elsewhere ``default``. Compiling twice is a
    no-op; nothing compiles until the first call."""
    cuda = backbone.device.type == "cuda"
    modules = [backbone.model.base_model]
    if backbone.family == "seq2seq":
        modules.append(backbone.model.get_encoder())
    for module in modules:
        if getattr(module, "_compiled_call_impl", None) is None:
            module.compile(mode="reduce-overhead" if cuda else "default")


def _prepare(task: str, registry, method_cfg: EPTConfig, train_cfg: TrainConfig, custom: data.DataOptions | None,
             transfer: TransferOptions | None, groups: dict, emit: events.EventHandler) -> _Prepared:
    """Resolve and load the task, load the backbone, encode, prepare the transfer start: every check that can fail
    on user input, cheapest first, and nothing written."""
    limits: DataLimits = groups["limits"]
    spec = resolve_spec(task, registry, custom)
    check_task_fits(spec, None, train_cfg)  # before the data and the model: bad options cost nothing
    if transfer is not None and transfer.sources != "auto":
        for source in transfer.sources:  # an unknown --init-from reference fails here, not after the model loads
            registry.resolve(source.ref)
    train_cfg = dataclasses.replace(train_cfg, objective=train_cfg.objective_for(spec.task_type))  # stored resolved
    task_data = data.load_task(spec, max_train=limits.max_train, max_eval=limits.max_eval, seed=train_cfg.seed,
                               train_examples=limits.train_examples)
    emit(events.DataLoaded(task=spec.name, sizes={k: len(task_data.split(k)) for k in data.SPLITS},
                           metric=spec.metric, task_type=spec.task_type))
    for note in task_data.notes:  # e.g. fewer few-shot examples than --train-examples asked for
        emit(events.Note(note))
    backbone = groups["loading"].load(emit)
    if train_cfg.compile:
        compile_backbone(backbone)
    check_task_fits(spec, backbone, train_cfg)
    method_cfg = method_cfg.resolved(backbone.width)
    target_room = train_cfg.max_target_length if not spec.strategy.has_labels and backbone.answer_in_input else 0
    backbone.check_length(prompt_length_of(method_cfg), method_cfg.max_length + target_room)
    encoded = encode_task(backbone, spec, method_cfg.max_length, task_data=task_data,
                          max_target_length=train_cfg.max_target_length)
    new_tokens = new_token_budget(encoded.train, train_cfg.max_target_length)
    start = TransferStart(init_tensors=None, method_cfg=method_cfg)
    if transfer is not None:
        start = prepare_transfer(registry, transfer, backbone, method_cfg, spec, task_data.validation,
                                 train_cfg.seed, emit)
        method_cfg = start.method_cfg
    return _Prepared(spec, task_data, backbone, method_cfg, train_cfg, encoded, new_tokens, start)


def _default_stop(p: _Prepared) -> tuple[str, ...]:
    """The stop strings the adapter decodes with by default, learned from its training targets (generation: a line
    break when no target has one); recorded in its summary, used by its evaluations here and later."""
    return p.spec.strategy.default_stop(p.task_data.train)


def _summary(p: _Prepared, result: TrainResult, gate, transfer: TransferOptions | None, groups: dict) -> dict:
    """The run summary stored with the adapter."""
    spec, task_data, train_cfg, new_tokens = p.spec, p.task_data, p.train_cfg, p.new_tokens
    train_examples, model = groups["limits"].train_examples, groups["loading"].model
    return {
        "source_weights": result.adapter.source_weights(),
        "space_weights": None if gate is None else [round(float(g), 6) for g in gate],
        "best_step": result.best_step,
        "steps": result.steps,
        "truncated": result.truncated,
        "history": result.history,
        "train_config": train_cfg.to_dict(),
        "data_sizes": {k: len(task_data.split(k)) for k in data.SPLITS},
        **({"train_examples": task_data.train_examples} if train_examples else {}),  # the K actually used
        **({"transfer_components": transfer.components} if transfer is not None and transfer.mode == "weighted"
           else {}),
        "data_source_fingerprint": task_data.source_fingerprint,  # eval refuses to store on changed data
        "model": model,
        **({"max_new_tokens": new_tokens, "stop": list(_default_stop(p))} if not spec.strategy.has_labels else {}),
    }


def _register(registry, p: _Prepared, result: TrainResult, materialized, summary: dict, info: RecordInfo):
    """Register the trained adapter (files first, then one transaction) with its metrics, lineage and run info."""
    from registry import MetricValue, NewAdapter, ParentLink, RunInfo

    parents = list(p.start.parents)
    if p.start.attention_sources:  # lineage weights of an attention mixture are what it learned
        parents = [ParentLink(rec.id, w, "attention")
                   for rec, w in zip(p.start.attention_sources, result.adapter.source_weights())]
    metrics = [MetricValue(split, name, value) for split, values in result.metrics.items()
               for name, value in values.items()]
    metrics += [MetricValue("validation", name, value, step=point["step"]) for point in result.history
                if "validation" in point for name, value in point["validation"].items()]
    method_cfg, backbone = p.method_cfg, p.backbone
    servable_tensors, servable_meta = servable.to_file(materialized, result.adapter.cfg, p.spec,
                                                       backbone.fingerprint(method_cfg.max_length))
    state_tensors, state_meta = result.state.to_file()
    new = NewAdapter(
        task=p.spec.name, method=method_cfg.method, config=method_cfg.to_dict(),
        params_by_group={k: v for k, v in result.params_by_group.items() if k != "total"},
        backbone=backbone_fingerprint(backbone, method_cfg.max_length),
        servable=servable_tensors, metadata=servable_meta,
        training_state=state_tensors, training_metadata=state_meta,
        metrics=metrics, parents=parents,
        run=RunInfo(seed=p.train_cfg.seed, data_fingerprint=p.task_data.fingerprint,
                    package_versions=package_versions(),
                    command_line=info.command_line or " ".join(sys.argv),  # masked by the registry on insert
                    duration_s=round(result.duration_s, 3), device=str(backbone.device) + f" ({backbone.precision})"),
        description=info.description, tags=list(info.tags), summary=summary,
    )
    registry.ensure_task(spec_to_task_record(p.spec))
    return registry.register(new)
