"""The plain dataclasses the registry API takes and returns. ORM rows never leave ``registry/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records themselves never need torch at import time
    import torch

ADAPTER_STATUSES = ("ready", "archived")
ARTIFACT_KINDS = ("servable", "training_state")
RESERVED_ALIASES = ("latest", "best")
DEFAULT_SPLITS = ("validation", "test")  # where a metric is looked up when no split is named


def final_order(step: int | None) -> tuple[bool, int]:
    """Sort key of the values of one (split, name): the largest is the final value (no step beats any step)."""
    return (step is None, step or 0)


@dataclass(frozen=True)
class TaskRecord:
    name: str
    description: str
    labels: list[str]
    metric: str = "accuracy"  # what @best maximises, on split "validation" (else "test")
    source: dict = field(default_factory=dict)  # where the data comes from, e.g. {"kind": "csv", "path": ...}
    template: str = ""
    created_at: datetime | None = None
    task_type: str = "classification"  # classification | generation | regression


@dataclass(frozen=True)
class BackboneFingerprint:
    """Identifies the frozen model an adapter was trained on; a prompt only fits the exact same embeddings."""

    name: str  # model name or local path
    revision: str | None
    embedding_sha256: str  # sha256 of the input-embedding matrix
    tokenizer_sha256: str
    width: int  # embedding width (hidden size)
    max_length: int  # the max input length the adapter was trained with


@dataclass(frozen=True)
class MetricValue:
    split: str
    name: str
    value: float
    step: int | None = None  # None: the final value


@dataclass(frozen=True)
class ParentLink:
    parent_id: str
    weight: float
    how: str  # e.g. "init-weighted", "attention"


@dataclass(frozen=True)
class RunInfo:
    seed: int | None
    data_fingerprint: str | None
    package_versions: dict
    command_line: str | None
    duration_s: float | None
    device: str | None


@dataclass(frozen=True)
class ArtifactRecord:
    sha256: str
    size: int
    path: str  # absolute path (or URL, for an fsspec root) under the artifact root
    kind: str  # "servable" | "training_state"


@dataclass(frozen=True)
class NewAdapter:
    """Everything ``Registry.register`` needs. Tensors go to safetensors files, the rest to one transaction."""

    task: str
    method: str
    config: dict
    params_by_group: dict[str, int]
    backbone: BackboneFingerprint
    servable: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    training_state: dict[str, torch.Tensor] | None = None
    training_metadata: dict[str, str] = field(default_factory=dict)
    metrics: list[MetricValue] = field(default_factory=list)
    parents: list[ParentLink] = field(default_factory=list)
    run: RunInfo | None = None
    description: str = ""
    tags: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # JSON extras shown by `show`, e.g. {"history": [...]}


@dataclass(frozen=True)
class AdapterRecord:
    id: str  # uuid4 hex, 32 characters
    task: str
    version: int
    ref: str  # "task@3"
    method: str
    config: dict
    status: str  # "ready" | "archived"
    created_at: datetime
    description: str
    params_by_group: dict[str, int]
    trainable_params: int
    backbone: BackboneFingerprint
    metrics: list[MetricValue]
    aliases: list[str]
    tags: list[str]
    artifacts: list[ArtifactRecord]
    run: RunInfo | None
    summary: dict
    parents: list[ParentLink]

    def metric(self, name: str, split: str | None = None) -> float | None:
        """The final value of metric ``name`` on ``split`` (default: "validation", else "test"), or None."""
        for s in (split,) if split else DEFAULT_SPLITS:
            rows = [m for m in self.metrics if m.split == s and m.name == name]
            if rows:
                return max(rows, key=lambda m: final_order(m.step)).value
        return None

    def artifact(self, kind: str) -> ArtifactRecord | None:
        return next((a for a in self.artifacts if a.kind == kind), None)


@dataclass(frozen=True)
class AdapterQuery:
    """The filters and order of ``Registry.list_adapters``; every filter given must match.

    backbone: model name, or a prefix (8+ hex digits) of the embedding sha256. Metric keys (``sort`` and
    ``min_metric``) are a metric name, ranked on "validation" else "test", or ``SPLIT:NAME``. Adapters without the
    sort metric come last; ``min_metric`` drops them. ``sort="created"`` orders by creation time.
    """

    task: str | None = None
    backbone: str | None = None
    method: str | None = None
    tag: str | None = None
    min_metric: dict[str, float] | None = None
    sort: str = "created"
    descending: bool = True
    limit: int | None = None
    include_archived: bool = False
