"""Tasks and their data as raw text: builtin tasks from asset packages, the user's files and hub datasets, readers,
deterministic splits and the task specification (labels, verbalizer, template).

Modules: ``task_types`` (the task-type table: one strategy per type, asked instead of comparing type names),
``tasks`` (resolving and loading a task: the API re-exported here), ``spec`` (the dataclasses and the data
fingerprint), ``rows`` (raw rows to labelled examples), ``splits`` (deterministic splits and subsamples),
``packaged`` (builtin tasks read from asset packages), ``glue`` (the GLUE/SuperGLUE catalogue: templates, metrics,
split protocol, data directory), ``tables`` (user files and hub datasets; the only importer of
``datasets``, and only when a custom task is read). May import ``eptctl.core`` only: no torch, no tokenizer.
"""

from eptctl.data.spec import SPLITS, Example, TaskData, TaskSpec
from eptctl.data.tasks import (
    BUILTIN_TASKS,
    CUSTOM_SPLITS,
    DataOptions,
    builtin_task,
    custom_task,
    load_task,
    read_examples,
    read_texts,
    resolve_task,
)

__all__ = [
    "BUILTIN_TASKS",
    "CUSTOM_SPLITS",
    "SPLITS",
    "DataOptions",
    "Example",
    "TaskData",
    "TaskSpec",
    "builtin_task",
    "custom_task",
    "load_task",
    "read_examples",
    "read_texts",
    "resolve_task",
]
