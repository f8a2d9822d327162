"""The eptctl registry: every adapter, its metrics, lineage and content-addressed safetensors files.

``Registry(url)`` is the whole API; it returns the dataclasses below, never ORM rows. The default database is
``sqlite:///$EPTCTL_HOME/registry.db``; ``$EPTCTL_REGISTRY_URL`` (e.g. ``postgresql+psycopg://...``) overrides it.
"""

from registry.api import Registry
from registry.db import URL_ENV, ArtifactWriteError, RegistryError, default_url, mask_url, resolve_url
from registry.migrate import current_revision, downgrade, head_revision, upgrade
from registry.records import (
    AdapterQuery,
    AdapterRecord,
    ArtifactRecord,
    BackboneFingerprint,
    MetricValue,
    NewAdapter,
    ParentLink,
    RunInfo,
    TaskRecord,
)

__all__ = [
    "AdapterQuery",
    "AdapterRecord",
    "ArtifactRecord",
    "ArtifactWriteError",
    "BackboneFingerprint",
    "MetricValue",
    "NewAdapter",
    "ParentLink",
    "Registry",
    "RegistryError",
    "RunInfo",
    "TaskRecord",
    "URL_ENV",
    "current_revision",
    "default_url",
    "downgrade",
    "head_revision",
    "mask_url",
    "resolve_url",
    "upgrade",
]
