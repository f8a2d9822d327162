"""Tasks as the registry stores them: conversion between :class:`~eptctl.data.TaskSpec` and the registry's
``TaskRecord``, and resolving a task name against builtin, stored and new custom tasks."""

from __future__ import annotations

from eptctl import data
from eptctl.core.errors import EptctlError


def spec_to_task_record(spec: data.TaskSpec):
    """The registry row of a task (the verbalizer travels inside ``source``)."""
    from registry import TaskRecord

    return TaskRecord(name=spec.name, description=spec.description, labels=list(spec.labels), metric=spec.metric,
                      source={**spec.source, "verbalizer": list(spec.verbalizer)}, template=spec.template)


def task_record_to_spec(record) -> data.TaskSpec:
    """The task spec of a registry ``TaskRecord``; raises ``EptctlError`` if the stored spec is invalid."""
    source = dict(record.source)
    verbalizer = source.pop("verbalizer", None) or list(record.labels)
    return data.TaskSpec(name=record.name, description=record.description, labels=tuple(record.labels),
                         verbalizer=tuple(verbalizer), template=record.template, metric=record.metric, source=source)


def stored_specs(registry) -> dict[str, data.TaskSpec]:
    """Every task stored in ``registry``, by name."""
    return {t.name: task_record_to_spec(t) for t in registry.list_tasks()}


def resolve_spec(task: str, registry, custom: data.DataOptions | None = None) -> data.TaskSpec:
    """A builtin task, a task stored in the registry, or a new custom task from ``--data`` (its labels, verbalizer
    and template kept from the stored task of that name). Raises ``EptctlError`` for an unknown task, a builtin
    task given ``--data``, or data that cannot define a task."""
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
