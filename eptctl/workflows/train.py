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
from eptctl.core.errors import EptctlError
from eptctl.core.home import eptctl_home
from eptctl.engine import distributed, servable
from eptctl.engine.config import TrainConfig
from eptctl.engine.encoding import encode_task, new_token_budget
from eptctl.engine.loop import TrainResult, fit
from eptctl.engine.metrics import check_metric
from eptctl.engine.scoring import TaskKind
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
    if backbone is not None and spec.task_type == "generation" and not backbone.can_generate:
        raise EptctlError(f"task '{spec.name}' generates text, but {backbone.name} is an encoder-only model",
                          hint="use a causal or seq2seq backbone (e.g. the default model) for generation tasks")
    if spec.task_type != "classification" and train_cfg.objective == "classify":
        raise EptctlError(f"--objective classify needs labels; task '{spec.name}' is a {spec.task_type} task",
                          hint="use --objective lm")


# --- train ----------------------------------------------------------------------------------------------------------
def train_task(
    task: str,
    *,
    registry,
    model: str = backbones.DEFAULT_MODEL,
    method_cfg: EPTConfig = EPTConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    custom: data.DataOptions | None = None,
    transfer: TransferOptions | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    train_examples: int | None = None,
    resume: bool = False,
    backbone: Backbone | None = None,
    description: str = "",
    tags: list[str] | None = None,
    command_line: str | None = None,
    on_event: events.EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    trust_remote_code: bool = False,
) -> TrainOutcome:
    """Train an adapter for ``task`` and register it; returns the registry record and the training result.

    ``custom`` defines a new task from the user's data; ``transfer`` starts from stored adapters; ``train_examples``
    trains on K examples stratified by label, the same for every seed (few-shot; recorded in the summary). Raises
    ``EptctlError`` for anything a user can get wrong, before the registry is written, and ``TrainingInterrupted``
    after a clean checkpoint when ``should_stop()`` turns true. Under ``torchrun`` / ``accelerate launch`` every
    rank calls this: the ranks train data-parallel, rank 0 alone registers, and the other ranks get ``record=None``
    (docs/distributed.md).
    """
    from registry import MetricValue, NewAdapter, ParentLink, RunInfo

    distributed.init()
    emit = on_event or events.ignore
    spec = resolve_spec(task, registry, custom)
    check_task_fits(spec, None, train_cfg)  # before the data and the model: bad options cost nothing
    if transfer is not None and transfer.sources != "auto":
        for source in transfer.sources:  # an unknown --init-from reference fails here, not after the model loads
            registry.resolve(source.ref)
    train_cfg = dataclasses.replace(train_cfg, objective=train_cfg.objective_for(spec.task_type))  # stored resolved
    task_data = data.load_task(spec, max_train=max_train, max_eval=max_eval, seed=train_cfg.seed,
                               train_examples=train_examples)
    emit(events.DataLoaded(task=spec.name, sizes={k: len(task_data.split(k)) for k in data.SPLITS},
                           metric=spec.metric, task_type=spec.task_type))
    for note in task_data.notes:  # e.g. fewer few-shot examples than --train-examples asked for
        emit(events.Note(note))
    if backbone is None:
        emit(events.LoadingModel(model=model, converting=backbones.needs_conversion(model)))
        with distributed.main_first():  # a first use converts the model into a shared cache: once, by rank 0
            backbone = backbones.load(model, trust_remote_code=trust_remote_code)
    check_task_fits(spec, backbone, train_cfg)
    method_cfg = method_cfg.resolved(backbone.width)
    target_room = train_cfg.max_target_length if spec.task_type != "classification" and backbone.answer_in_input else 0
    backbone.check_length(prompt_length_of(method_cfg), method_cfg.max_length + target_room)
    encoded = encode_task(backbone, spec, method_cfg.max_length, task_data=task_data,
                          max_target_length=train_cfg.max_target_length)
    new_tokens = new_token_budget(encoded.train, train_cfg.max_target_length)
    start = TransferStart(init_tensors=None, method_cfg=method_cfg)
    if transfer is not None:
        start = prepare_transfer(registry, transfer, backbone, method_cfg, spec, task_data.validation,
                                 train_cfg.seed, emit)
        method_cfg = start.method_cfg
    key = run_key(spec.name, task_data.fingerprint, backbone.fingerprint()["embedding_sha256"], method_cfg, train_cfg)
    ckpt = checkpoint_path(key)
    if resume and not distributed.from_rank0(ckpt.exists):  # rank 0 holds the checkpoint
        raise EptctlError(f"no checkpoint to resume for this run (key {key})",
                          hint="resume needs the same task, data, model and options as the interrupted run")
    result = fit(backbone, encoded.train, encoded.validation, encoded.answers, method_cfg, train_cfg,
                 num_labels=spec.head_size, test_set=encoded.test, metric=spec.metric,
                 kind=TaskKind.of(spec, max_new_tokens=new_tokens),
                 init_tensors=start.init_tensors, checkpoint_path=ckpt, resume=resume, on_event=on_event,
                 should_stop=should_stop)
    if not distributed.is_main():  # every rank holds the same adapter; one registration is enough
        return TrainOutcome(record=None, result=result, spec=spec)
    materialized = result.adapter.materialize()
    parents = list(start.parents)
    if start.attention_sources:  # lineage weights of an attention mixture are what it learned
        parents = [ParentLink(rec.id, w, "attention")
                   for rec, w in zip(start.attention_sources, result.adapter.source_weights())]
    metrics = [MetricValue(split, name, value) for split, values in result.metrics.items()
               for name, value in values.items()]
    metrics += [MetricValue("validation", name, value, step=point["step"]) for point in result.history
                if "validation" in point for name, value in point["validation"].items()]
    summary = {
        "source_weights": result.adapter.source_weights(),
        "space_weights": None if materialized.gate is None else [round(float(g), 6) for g in materialized.gate],
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
        **({"max_new_tokens": new_tokens} if spec.task_type != "classification" else {}),
    }
    servable_tensors, servable_meta = servable.to_file(materialized, result.adapter.cfg, spec,
                                                       backbone.fingerprint(method_cfg.max_length))
    state_tensors, state_meta = result.state.to_file()
    new = NewAdapter(
        task=spec.name, method=method_cfg.method, config=method_cfg.to_dict(),
        params_by_group={k: v for k, v in result.params_by_group.items() if k != "total"},
        backbone=backbone_fingerprint(backbone, method_cfg.max_length),
        servable=servable_tensors, metadata=servable_meta,
        training_state=state_tensors, training_metadata=state_meta,
        metrics=metrics, parents=parents,
        run=RunInfo(seed=train_cfg.seed, data_fingerprint=task_data.fingerprint, package_versions=package_versions(),
                    command_line=command_line or " ".join(sys.argv), duration_s=round(result.duration_s, 3),
                    device=str(backbone.device) + f" ({backbone.precision})"),
        description=description, tags=list(tags or []), summary=summary,
    )
    registry.ensure_task(spec_to_task_record(spec))
    record = registry.register(new)
    ckpt.unlink(missing_ok=True)  # the run is complete; its final state now lives in the registry
    return TrainOutcome(record=record, result=result, spec=spec)
