"""End-to-end workflows over the library: train a task and register the adapter; the CLI is a thin layer on these.

Order matters for "bad input loses nothing": everything a user can get wrong (task, data, columns, labels, config,
backbone) is checked before the registry is written, and the registry is written once, at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from eptctl import __version__, data, distributed, models
from eptctl.backbones import Backbone, EncodedExample, TaskEncoding
from eptctl.errors import EptctlError
from eptctl.home import eptctl_home
from eptctl.methods import EPTConfig
from eptctl.training import TrainConfig, TrainResult, train

PACKAGES = ("torch", "transformers", "datasets", "safetensors", "sqlalchemy")


@dataclass(frozen=True)
class DataOptions:
    """A custom task's data: ``--data PATH`` and its columns."""

    path: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    template: str | None = None
    hub: bool = False


@dataclass
class EncodedTask:
    spec: data.TaskSpec
    task_data: data.TaskData
    answers: TaskEncoding
    train: list[EncodedExample]
    validation: list[EncodedExample]
    test: list[EncodedExample]


@dataclass
class TrainOutcome:
    record: object  # registry.AdapterRecord
    result: TrainResult
    spec: data.TaskSpec
    extra: dict = field(default_factory=dict)


# --- tasks ------------------------------------------------------------------------------------------------------------
def spec_to_task_record(spec: data.TaskSpec):
    from registry import TaskRecord

    return TaskRecord(name=spec.name, description=spec.description, labels=list(spec.labels), metric=spec.metric,
                      source={**spec.source, "verbalizer": list(spec.verbalizer)}, template=spec.template)


def task_record_to_spec(record) -> data.TaskSpec:
    source = dict(record.source)
    verbalizer = source.pop("verbalizer", None) or list(record.labels)
    return data.TaskSpec(name=record.name, description=record.description, labels=tuple(record.labels),
                         verbalizer=tuple(verbalizer), template=record.template, metric=record.metric, source=source)


def stored_specs(registry) -> dict[str, data.TaskSpec]:
    return {t.name: task_record_to_spec(t) for t in registry.list_tasks()}


def resolve_spec(task: str, registry, custom: DataOptions | None = None) -> data.TaskSpec:
    """A builtin task, a task stored in the registry, or a new custom task from ``--data``."""
    stored = stored_specs(registry)
    if custom is None:
        return data.resolve_task(task, stored=stored)
    if task in data.BUILTIN_TASKS:
        raise EptctlError(f"'{task}' is a builtin task and takes no --data", hint="pick a new name for a custom task")
    previous = stored.get(task)
    return data.custom_task(
        task, custom.path, text_column=custom.text_column, text_pair_column=custom.text_pair_column,
        label_column=custom.label_column, labels=previous.labels if previous else None,
        verbalizer=previous.verbalizer if previous else None, template=custom.template or (
            previous.template if previous else None), hub=custom.hub,
    )


def encode_task(backbone: Backbone, spec: data.TaskSpec, max_length: int, *, max_train: int | None = None,
                max_eval: int | None = None, seed: int = 0, task_data: data.TaskData | None = None) -> EncodedTask:
    task_data = task_data or data.load_task(spec, max_train=max_train, max_eval=max_eval, seed=seed)
    answers = backbone.encode_answers(spec.verbalizer)

    def enc(examples):
        return encode_examples(backbone, spec, examples, answers, max_length)

    return EncodedTask(spec, task_data, answers, enc(task_data.train), enc(task_data.validation), enc(task_data.test))


def encode_examples(backbone: Backbone, spec: data.TaskSpec, examples, answers: TaskEncoding, max_length: int
                    ) -> list[EncodedExample]:
    """The task's template filled with each example, tokenized in one call."""
    return backbone.encode([spec.prompt(e) for e in examples], [e.label for e in examples], answers, max_length)


# --- fingerprints and run metadata ---------------------------------------------------------------------------------
def backbone_fingerprint(backbone: Backbone, max_length: int):
    from registry import BackboneFingerprint

    fp = backbone.fingerprint(max_length)
    return BackboneFingerprint(name=fp["name"], revision=fp["revision"], embedding_sha256=fp["embedding_sha256"],
                               tokenizer_sha256=fp["tokenizer_sha256"], width=fp["width"], max_length=max_length)


def check_backbone(record, backbone: Backbone) -> None:
    """Refuse to serve an adapter on any backbone other than the exact one it was trained on."""
    fp = backbone.fingerprint()
    if record.backbone.embedding_sha256 != fp["embedding_sha256"] or record.backbone.width != fp["width"]:
        raise EptctlError(
            f"adapter {record.ref} was trained on backbone '{record.backbone.name}', not on '{backbone.name}' "
            "(embedding fingerprints differ)",
            hint=f"use --model {record.backbone.name}",
        )


def package_versions() -> dict[str, str]:
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
    return eptctl_home() / "runs" / f"{key}.safetensors"


def servable_metadata(result_adapter, spec: data.TaskSpec, backbone: Backbone, max_length: int) -> dict[str, str]:
    return {
        "format": "eptctl-servable",
        "eptctl_version": __version__,
        "config": result_adapter.cfg.to_json(),
        "task": json.dumps(spec.to_dict(), sort_keys=True),
        "backbone": json.dumps(backbone.fingerprint(max_length), sort_keys=True),
    }


# --- train ----------------------------------------------------------------------------------------------------------
def train_task(
    task: str,
    *,
    registry,
    model: str = models.DEFAULT_MODEL,
    method_cfg: EPTConfig = EPTConfig(),
    train_cfg: TrainConfig = TrainConfig(),
    custom: DataOptions | None = None,
    max_train: int | None = None,
    max_eval: int | None = None,
    resume: bool = False,
    backbone: Backbone | None = None,
    init_tensors: dict[str, torch.Tensor] | None = None,
    parents: list | None = None,
    init_from: list | str | None = None,
    transfer_mode: str = "weighted",
    top_k: int = 2,
    probe: int = 64,
    description: str = "",
    tags: list[str] | None = None,
    command_line: str | None = None,
    on_event: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    trust_remote_code: bool = False,
) -> TrainOutcome:
    """Train an adapter for ``task`` and register it; returns the registry record and the training result.

    Under ``torchrun`` / ``accelerate launch`` every rank calls this: the ranks train data-parallel, rank 0 alone
    registers, and the other ranks get ``record=None`` (docs/distributed.md).
    """
    from registry import MetricValue, NewAdapter, RunInfo

    distributed.init()
    emit = on_event or (lambda event: None)
    spec = resolve_spec(task, registry, custom)
    task_data = data.load_task(spec, max_train=max_train, max_eval=max_eval, seed=train_cfg.seed)
    emit({"event": "data", "task": spec.name, "sizes": {k: len(task_data.split(k)) for k in data.SPLITS}})
    if backbone is None:
        emit({"event": "loading_model", "model": model})
        with distributed.main_first():  # a first use converts the model into a shared cache: once, by rank 0
            backbone = models.load(model, trust_remote_code=trust_remote_code)
    method_cfg = method_cfg.resolved(backbone.width)
    encoded = encode_task(backbone, spec, method_cfg.max_length, task_data=task_data)
    attention_sources = None
    if init_from is not None:
        if transfer_mode not in ("weighted", "attention"):
            raise EptctlError(f"--transfer-mode must be weighted or attention, got {transfer_mode!r}",
                              hint="use --transfer-mode weighted")
        init_tensors, parents, method_cfg = _fused_start(registry, init_from, backbone, method_cfg, train_cfg, spec,
                                                         task_data, top_k, probe, emit, transfer_mode)
        if transfer_mode == "attention":
            attention_sources, parents = parents, []
    key = run_key(spec.name, task_data.fingerprint, backbone.fingerprint()["embedding_sha256"], method_cfg, train_cfg)
    ckpt = checkpoint_path(key)
    if resume and not distributed.from_rank0(ckpt.exists):  # rank 0 holds the checkpoint
        raise EptctlError(f"no checkpoint to resume for this run (key {key})",
                          hint="resume needs the same task, data, model and options as the interrupted run")
    result = train(backbone, encoded.train, encoded.validation, encoded.answers, method_cfg, train_cfg,
                   num_labels=spec.num_labels, test_set=encoded.test, metric=spec.metric,
                   init_tensors=init_tensors, checkpoint_path=ckpt, resume=resume, on_event=on_event,
                   should_stop=should_stop)
    if not distributed.is_main():  # every rank holds the same adapter; one registration is enough
        return TrainOutcome(record=None, result=result, spec=spec)
    materialized = result.adapter.materialize()
    if attention_sources:  # lineage weights of an attention mixture are what it learned
        from registry import ParentLink

        parents = [ParentLink(rec.id, w, "attention")
                   for rec, w in zip(attention_sources, result.adapter.source_weights())]
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
        "model": model,
    }
    new = NewAdapter(
        task=spec.name, method=method_cfg.method, config=method_cfg.to_dict(),
        params_by_group={k: v for k, v in result.params_by_group.items() if k != "total"},
        backbone=backbone_fingerprint(backbone, method_cfg.max_length),
        servable={k: v.detach().cpu().contiguous() for k, v in materialized.tensors().items()},
        metadata=servable_metadata(result.adapter, spec, backbone, method_cfg.max_length),
        training_state=result.training_state, training_metadata=result.training_metadata,
        metrics=metrics, parents=list(parents or []),
        run=RunInfo(seed=train_cfg.seed, data_fingerprint=task_data.fingerprint, package_versions=package_versions(),
                    command_line=command_line or " ".join(sys.argv), duration_s=round(result.duration_s, 3),
                    device=str(backbone.device) + f" ({backbone.precision})"),
        description=description, tags=list(tags or []), summary=summary,
    )
    registry.ensure_task(spec_to_task_record(spec))
    record = registry.register(new)
    ckpt.unlink(missing_ok=True)  # the run is complete; its final state now lives in the registry
    return TrainOutcome(record=record, result=result, spec=spec)


def _fused_start(registry, init_from, backbone, method_cfg, train_cfg, spec, task_data, top_k, probe, emit, mode):
    """Init tensors, parent links (attention mode: source records) and the method config for ``--init-from``."""
    from eptctl import transfer
    from eptctl.training import new_adapter

    template = new_adapter(backbone, method_cfg, spec.num_labels, train_cfg.seed)
    if init_from == "auto":
        shape_keys = ("method", "prompt_length", "short_length", "rank", "max_length", "fusion", "fusion_dim",
                      "fusion_heads", "projection", "spaces", "space_rank")
        wanted = {k: method_cfg.to_dict()[k] for k in shape_keys}
        candidates = [rec for rec in registry.list_adapters(backbone=backbone.fingerprint()["embedding_sha256"][:16])
                      if rec.task != spec.name and all(rec.config.get(k) == v for k, v in wanted.items())]
        if not candidates:
            raise EptctlError("--init-from auto found no compatible stored adapter on this backbone",
                              hint="train a source task first with the same method and shape options")
        ranked = transfer.probe_sources(registry, spec, backbone, task_data.validation[:probe], candidates, top_k)
        if not ranked:  # encoder adapters carry task heads and cannot be probed: newest compatible ones
            ranked = [{"id": rec.id, "ref": rec.ref} for rec in candidates[:top_k]]
        emit({"event": "auto_sources", "ranked": ranked})
        init_from = [transfer.Source(r["id"], 1.0) for r in ranked]
    if mode == "attention":
        init_tensors, records = transfer.attention_init(registry, list(init_from), backbone, template)
        emit({"event": "attention_init", "sources": [r.ref for r in records]})
        return init_tensors, records, dataclasses.replace(method_cfg, source_prompts=len(records))
    fused, parents = transfer.fused_init(registry, list(init_from), backbone, template)
    emit({"event": "fused_init", "parents": [(p.parent_id, p.weight) for p in parents]})
    return fused, parents, method_cfg
