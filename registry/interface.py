"""The registry's row store behind one small interface: reads, writes and maintenance, kept apart from the
SQLAlchemy implementation (``registry/sql_*.py``) as MLflow keeps its ``AbstractStore`` apart from its
``SqlAlchemyStore``.

A store owns rows only. Files are the facade's (``registry.api.Registry``): it writes an adapter's artifact files
before it calls ``insert_adapter``, and where a check or a removal of a file has to happen under the store's per-file
lock it hands in a callback. Every method takes and returns the dataclasses of ``registry/records.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from registry.records import AdapterQuery, AdapterRecord, MetricValue, NewAdapter, TaskRecord
from registry.store import Blob

Ref = str | AdapterRecord  # an id prefix, TASK@VERSION, TASK@ALIAS, or a record (re-read by its id)


class BlobVanished(Exception):
    """An artifact file was removed (a concurrent ``delete`` or ``gc``) between being written and being locked.

    Nothing was written: the caller writes the file again and retries the insert.
    """

    def __init__(self, blob: Blob):
        super().__init__(f"artifact file {blob.relpath} vanished before its row was written")
        self.blob = blob


@dataclass(frozen=True)
class Insertion:
    """Where a new adapter's row goes: its id, creation time (None: now) and, for an import, its aliases."""

    adapter_id: str
    created_at: datetime | None = None
    alias_names: tuple[str, ...] = ()
    imported: bool = False  # an import keeps the exporter's id, so an id already present is refused
    task: TaskRecord | None = None  # created in the same transaction when missing (an import into a new registry)


class RegistryReads(ABC):
    """Snapshot reads. Unknown names and references raise ``RegistryError``."""

    @abstractmethod
    def get_task(self, name: str) -> TaskRecord:
        """The task called ``name``."""

    @abstractmethod
    def list_tasks(self) -> list[TaskRecord]:
        """Every task, by name."""

    @abstractmethod
    def adapter_id(self, ref: Ref) -> str:
        """The full id ``ref`` names."""

    @abstractmethod
    def resolve(self, ref: Ref) -> AdapterRecord:
        """The record ``ref`` names, read in one snapshot."""

    @abstractmethod
    def get(self, adapter_id: str) -> AdapterRecord:
        """The adapter with exactly this id."""

    @abstractmethod
    def list_adapters(self, query: AdapterQuery) -> list[AdapterRecord]:
        """The adapters ``query`` selects, in its order."""

    @abstractmethod
    def parents(self, ref: Ref) -> list[AdapterRecord]:
        """The parents of ``ref`` that still exist, in registration order."""

    @abstractmethod
    def children(self, ref: Ref) -> list[AdapterRecord]:
        """The adapters that name ``ref`` as a parent, oldest first."""

    @abstractmethod
    def current_revision(self) -> str | None:
        """The schema revision of the database."""


class RegistryWrites(ABC):
    """One transaction each. ``name`` is how the adapter is called in an error when it was deleted meanwhile."""

    @abstractmethod
    def ensure_task(self, task: TaskRecord) -> None:
        """Insert the task unless one of that name exists (an existing task is never changed)."""

    @abstractmethod
    def insert_adapter(self, new: NewAdapter, blobs: dict[str, Blob], insertion: Insertion,
                       present: Callable[[Blob], bool]) -> None:
        """Take the task's next version and insert the adapter with everything it references.

        ``blobs`` (kind -> Blob) are already on disk; ``present(blob)`` is asked under each file's lock and
        ``BlobVanished`` raised if it is gone. Raises ``RegistryError`` for unknown parents or an imported id that
        is already present.
        """

    @abstractmethod
    def add_metrics(self, adapter_id: str, name: str, values: list[MetricValue]) -> None:
        """Store metric values; one for an existing (split, name, step) replaces it."""

    @abstractmethod
    def set_alias(self, adapter_id: str, name: str, alias: str) -> None:
        """Point the task's ``alias`` at the adapter, moving it if it pointed elsewhere."""

    @abstractmethod
    def remove_alias(self, task: str, alias: str) -> bool:
        """False if the task has no such alias."""

    @abstractmethod
    def add_tags(self, adapter_id: str, name: str, tags: list[str]) -> None:
        """Add the tags the adapter does not have yet."""

    @abstractmethod
    def remove_tags(self, adapter_id: str, name: str, tags: list[str]) -> None:
        """Remove these tags (absent ones are ignored)."""

    @abstractmethod
    def set_archived(self, adapter_id: str, name: str, archived: bool) -> None:
        """Archive the adapter, or with ``archived=False`` make it ready again."""


class RegistryMaintenance(ABC):
    """Deletes, garbage collection and the schema."""

    @abstractmethod
    def delete_adapter(self, rec: AdapterRecord, force: bool) -> None:
        """Remove the adapter's rows; a parent of other adapters raises ``RegistryError`` unless ``force``."""

    @abstractmethod
    def referenced_sha256s(self) -> set[str]:
        """The sha256 of every file some artifact row references."""

    @abstractmethod
    def remove_if_unreferenced(self, sha256: str, remove: Callable[[], Path | None]) -> Path | None:
        """Call ``remove()`` (which unlinks the file) if no row references ``sha256``, under the per-file lock that
        ``insert_adapter`` takes; its result, or None if the file is still referenced."""

    @abstractmethod
    def upgrade(self) -> tuple[str | None, str | None]:
        """Migrate the schema to head; (revision before, revision after)."""

    @abstractmethod
    def scrub_command_lines(self, mask: Callable[[str], str], dry_run: bool) -> list[str]:
        """In one write transaction, replace each stored run command line by ``mask(command_line)`` where that
        differs (unless ``dry_run``); the ids of the adapters whose command line differs."""


class RegistryStore(RegistryReads, RegistryWrites, RegistryMaintenance):
    """Everything ``Registry`` needs from a database."""

    display_url: str  # password masked

    @abstractmethod
    def close(self) -> None:
        """Release the database connections."""
