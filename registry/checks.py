"""What the facade checks before anything is written, and the metadata every artifact file carries."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from eptctl import __version__
from registry import refs
from registry.db import RegistryError
from registry.records import MetricValue, NewAdapter

FORMAT_VERSION = "1"  # of the eptctl.* keys in the safetensors metadata


def file_metadata(new: NewAdapter, kind: str, extra: dict[str, str]) -> dict[str, str]:
    """What goes into the safetensors header, so that a file alone says what it is (eptctl.* keys win)."""
    return {
        **extra,
        "eptctl.format": FORMAT_VERSION,
        "eptctl.version": __version__,
        "eptctl.kind": kind,
        "eptctl.task": new.task,
        "eptctl.method": new.method,
        "eptctl.config": json.dumps(new.config, sort_keys=True),
        "eptctl.backbone": json.dumps(asdict(new.backbone), sort_keys=True),
    }


def check_new(new: NewAdapter, tensors: bool = True) -> None:
    """Programming errors in what the trainer hands over fail before any file is written (ValueError, TypeError);
    a bad tag or metric raises ``RegistryError``."""
    if not new.method:
        raise ValueError("NewAdapter.method is empty")
    if tensors and not new.servable:
        raise ValueError("NewAdapter.servable has no tensors")
    json.dumps([new.config, new.summary, new.run and asdict(new.run)])  # JSON-serialisable, or TypeError here
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in new.params_by_group.items()):
        raise ValueError("NewAdapter.params_by_group must map group names to int counts")
    for t in new.tags:
        refs.check_tag(t)
    check_metrics(new.metrics)


def check_metrics(values: list[MetricValue]) -> None:
    """``RegistryError`` for a non-finite value."""
    for m in values:
        if not math.isfinite(m.value):
            # SQLite would store NaN as NULL; a diverged value is better refused loudly than ranked silently.
            raise RegistryError(f"metric {m.split}:{m.name} is {m.value}", hint="only finite metric values are stored")
