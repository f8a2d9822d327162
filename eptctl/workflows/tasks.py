"""Tasks as the registry stores them: conversion between :class:`~eptctl.data.TaskSpec` and the registry's
``TaskRecord``, and resolving a task name against builtin, stored and new custom tasks."""

from __future__ import annotations

from eptctl import data
from eptctl.core.errors import EptctlError
from eptctl.data.task_types import DEFAULT_TASK_TYPE, TASK_TYPES

# Spec fields that travel inside the registry row's ``source`` JSON (the row has no column of their own).
_IN_SOURCE = ("verbalizer", "grid", "value_range", "input_columns")


def spec_to_task_record(spec: data.TaskSpec):
    """The registry row of a task (the verbalizer, and a regression task's grid and range, travel in ``source``)."""
    from registry import TaskRecord

    source = {**spec.source, "verbalizer": list(spec.verbalizer), **spec.strategy.record_source(spec)}
    if spec.input_columns:
        source["input_columns"] = list(spec.input_columns)
    return TaskRecord(name=spec.name, description=spec.description, labels=list(spec.labels), metric=spec.metric,
                      source=source, template=spec.template, task_type=spec.task_type)


def task_record_to_spec(record) -> data.TaskSpec:
    """The task spec of a registry ``TaskRecord``; raises ``EptctlError`` if the stored spec is invalid."""
    source = dict(record.source)
    extra = {key: source.pop(key, None) for key in _IN_SOURCE}
    task_type = getattr(record, "task_type", DEFAULT_TASK_TYPE)  # rows before migration 0004 are classification
    kind = TASK_TYPES.get(task_type)  # an unknown one is TaskSpec's error, which names the task
    verbalizer = extra["verbalizer"] or (list(record.labels) if kind is not None and kind.has_labels else [])
    return data.TaskSpec(name=record.name, description=record.description, labels=tuple(record.labels),
                         verbalizer=tuple(verbalizer), template=record.template, metric=record.metric, source=source,
                         task_type=task_type, grid=extra["grid"], value_range=extra["value_range"],
                         input_columns=tuple(extra["input_columns"] or ()))


def stored_specs(registry) -> dict[str, data.TaskSpec]:
    """Every task stored in ``registry``, by name."""
    return {t.name: task_record_to_spec(t) for t in registry.list_tasks()}


def resolve_spec(task: str, registry, custom: data.DataOptions | None = None) -> data.TaskSpec:
    """A builtin task, a task stored in the registry, or a new custom task from ``--data`` (its labels, verbalizer
    and template kept from the stored task of that name). Raises ``EptctlError`` for an unknown task, a builtin
    task given ``--data``, or data that cannot define a task."""
    records = {t.name: t for t in registry.list_tasks()}
    if task in records and task in data.BUILTIN_TASKS and records[task].source.get("kind") not in ("builtin",
                                                                                                    "benchmark"):
        # A custom task stored before this name became builtin (the GLUE catalogue): never swap its data silently.
        raise EptctlError(f"'{task}' is now a builtin task, and this registry holds a custom task of that name",
                          hint="its adapters stay usable by reference; train the custom data under a new name")
    if custom is None:
        if task in records and task not in data.BUILTIN_TASKS:
            return task_record_to_spec(records[task])  # only the task asked for: another stored task's row is not read
        return data.resolve_task(task, stored=dict.fromkeys(records))  # names only: a builtin, or the error
    if task in data.BUILTIN_TASKS:
        raise EptctlError(f"'{task}' is a builtin task and takes no --data", hint="pick a new name for a custom task")
    previous = task_record_to_spec(records[task]) if task in records else None
    if previous is not None and previous.task_type != custom.task_type:
        raise EptctlError(f"task '{task}' is stored as a {previous.task_type} task, not {custom.task_type}",
                          hint=f"pass --task-type {previous.task_type}, or pick a new task name")
    if previous is not None and custom.template is not None and custom.template != previous.template:
        raise EptctlError(f"task '{task}' is stored with the template {previous.template!r}; another template makes "
                          "another task", hint="pick a new task name for the new template, or drop --template")
    kind = previous.strategy if previous is not None else None
    same = kind is not None and kind.has_labels
    return data.custom_task(
        task, custom, labels=previous.labels if same else None, verbalizer=previous.verbalizer if same else None,
        template=custom.template or (previous.template if previous else None),
        metric=custom.metric or (previous.metric if previous else None),
        grid=previous.grid if kind is not None and kind.uses_grid else custom.grid,
    )
