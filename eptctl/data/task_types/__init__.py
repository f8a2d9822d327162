"""The task-type table: every task type eptctl knows, by name, and the lookup everything else goes through.

Adding a type: a module of this package with a :class:`~eptctl.data.task_types.base.TaskType` subclass, and its line
in ``TASK_TYPES`` below. Imports only ``eptctl.core`` and the standard library (the data layer's rule).
"""

from __future__ import annotations

from eptctl.core.errors import EptctlError
from eptctl.data.task_types.base import TaskType
from eptctl.data.task_types.classification import CLASSIFICATION
from eptctl.data.task_types.generation import GENERATION
from eptctl.data.task_types.regression import REGRESSION

# In this order in help texts, hints and mixed-task batches.
TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (CLASSIFICATION, GENERATION, REGRESSION)}
# The type of a task stored before task types existed (registry migration 0004) or given none.
DEFAULT_TASK_TYPE = CLASSIFICATION.name


def names() -> tuple[str, ...]:
    """The task types' names, in table order."""
    return tuple(TASK_TYPES)


def task_type(name: str) -> TaskType:
    """The strategy of the task type ``name``; raises ``EptctlError`` (hint: the known names) for an unknown one."""
    try:
        return TASK_TYPES[name]
    except (KeyError, TypeError):
        raise EptctlError(f"unknown task type {name!r}",
                          hint="choose the task type from: " + ", ".join(TASK_TYPES)) from None


__all__ = ["DEFAULT_TASK_TYPE", "TASK_TYPES", "TaskType", "names", "task_type"]
