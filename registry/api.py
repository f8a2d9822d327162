"""``Registry``: the public facade over a row store (``registry/interface.py``) and the artifact file store.

It returns dataclasses, never ORM rows. Write order: every artifact file first (temp file, fsync, atomic rename,
content-addressed by its sha256), then the rows in one transaction. A crash in between leaves an unreferenced file
that ``gc`` removes, never a row without its file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eptctl.core.files import read_only_reason
from eptctl.core.home import eptctl_home
from eptctl.core.secrets import mask_secrets
from registry import refs
from registry.checks import check_metrics, check_new, file_metadata
from registry.db import ArtifactWriteError, RegistryError, read_only_error
from registry.interface import BlobVanished, Insertion, Ref, RegistryStore
from registry.records import AdapterQuery, AdapterRecord, MetricValue, NewAdapter, TaskRecord
from registry.sql_store import SqlAlchemyStore
from registry.store import ARTIFACTS_ENV, ArtifactError, ArtifactStore, Blob, open_store, serialize

if TYPE_CHECKING:
    import torch

WRITE_ATTEMPTS = 5  # files re-written after a concurrent gc/delete removed identical bytes; more means a broken store


class Registry:
    """Every adapter eptctl trains: rows in SQLite or PostgreSQL, weights in a content-addressed file store.

    ``url``: the database (None: ``$EPTCTL_REGISTRY_URL``, else ``sqlite:///$EPTCTL_HOME/registry.db``);
    ``artifacts``: the artifact root (None: ``$EPTCTL_ARTIFACTS``, else ``$EPTCTL_HOME/artifacts``). Errors a user
    can cause (unreachable database, out-of-date schema, unknown reference, corrupt file) raise ``RegistryError``.

    Example::

        reg = Registry()
        rec = reg.resolve("rt-polarity@best")
        tensors, metadata = reg.load_servable(rec)
    """

    def __init__(self, url: str | None = None, artifacts: str | Path | None = None):
        # Rows keep paths relative to this root, so hosts that mount a shared root at different places agree.
        self.store = open_store(artifacts or os.environ.get(ARTIFACTS_ENV) or eptctl_home() / "artifacts")
        rows = SqlAlchemyStore(url, self.store.root)
        self._db = rows.db  # the engine, for benchmarks and tests that go past the API
        self._rows: RegistryStore = rows
        self.display_url = self._rows.display_url  # password masked: the only form ever shown

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.display_url!r})"

    def close(self) -> None:
        """Release the database connections."""
        self._rows.close()

    def check_writable(self, artifacts: bool = True) -> None:
        """Raise ``RegistryError`` now if ``register`` would fail for want of write access: the database or (with
        ``artifacts``) the local artifact root is read-only. ``train`` calls it before loading data or a model, and
        ``eval`` (which stores rows only, ``artifacts=False``) before evaluating, so no work is lost."""
        if self._db.read_only:
            raise read_only_error(self.display_url, self._db.read_only)
        reason = read_only_reason(self.store.root) if artifacts and isinstance(self.store, ArtifactStore) else None
        if reason:
            raise RegistryError(f"the artifact root {self.store.root} is read-only: {reason}",
                                hint=f"make it writable, or point ${ARTIFACTS_ENV} at a writable folder (reads "
                                     "work as they are)")

    # -- schema -------------------------------------------------------------------------------------------------

    def upgrade(self) -> tuple[str | None, str | None]:
        """Migrate the database to head; (revision before, revision after)."""
        return self._rows.upgrade()

    def current_revision(self) -> str | None:
        """The database's schema revision."""
        return self._rows.current_revision()

    # -- tasks --------------------------------------------------------------------------------------------------

    def ensure_task(self, task: TaskRecord) -> TaskRecord:
        """Create the task if it is missing; return the stored one (an existing task is never changed)."""
        refs.check_task_name(task.name)
        json.dumps([task.labels, task.source])  # fail here, not halfway through a transaction
        self._rows.ensure_task(task)
        return self.get_task(task.name)

    def get_task(self, name: str) -> TaskRecord:
        """The task called ``name``; ``RegistryError`` if there is none."""
        return self._rows.get_task(name)

    def list_tasks(self) -> list[TaskRecord]:
        """Every task, by name."""
        return self._rows.list_tasks()

    # -- register -----------------------------------------------------------------------------------------------

    def register(self, new: NewAdapter) -> AdapterRecord:
        """Write the artifact files, then the adapter with its metrics, lineage, tags and run in one transaction.

        A crash in between leaves an unreferenced file (removed by ``gc``), never a row without its file.
        Raises ``RegistryError`` for an unknown task or parent, ``ValueError`` for a malformed ``new``.
        """
        check_new(new)
        self.get_task(new.task)  # an unknown task fails before any file is written
        self.check_writable()
        blobs = {"servable": serialize(new.servable, file_metadata(new, "servable", new.metadata))}
        if new.training_state is not None:
            meta = file_metadata(new, "training_state", new.training_metadata)
            blobs["training_state"] = serialize(new.training_state, meta)
        adapter_id = uuid.uuid4().hex
        self._write_then_insert(new, blobs, Insertion(adapter_id))
        return self.get(adapter_id)

    def import_adapter(
        self,
        new: NewAdapter,
        *,
        adapter_id: str,
        created_at: datetime,
        files: dict[str, bytes],
        alias_names: Sequence[str] = (),
        task: TaskRecord | None = None,
    ) -> AdapterRecord:
        """Register an adapter exported from another registry, keeping its id, its creation time and the exact bytes
        of its files (``files[kind]``, so the sha256 survives; ``new.servable`` and ``new.training_state`` are not
        used). It gets the task's next version here. Each of ``alias_names`` still free in this task is set; the
        others are left as they are. An id already present is refused (``RegistryError``), and on any failure the
        files this call added are removed again. With ``task`` (named ``new.task``), a missing task is created in the
        adapter's own transaction, so a refused import leaves no task behind either.
        """
        check_new(new, tensors=False)
        if not re.fullmatch(r"[0-9a-f]{32}", adapter_id):
            raise ValueError(f"adapter id must be 32 lowercase hex digits, got {adapter_id!r}")
        if "servable" not in files or not set(files) <= {"servable", "training_state"}:
            raise ValueError(f"files must hold 'servable' and optionally 'training_state', got {sorted(files)}")
        for name in alias_names:
            refs.check_alias(name)
        created_at = created_at if created_at.tzinfo else created_at.replace(tzinfo=timezone.utc)
        if task is None:
            self.get_task(new.task)
        else:
            if task.name != new.task:
                raise ValueError(f"task {task.name!r} is not the adapter's task {new.task!r}")
            refs.check_task_name(task.name)
            json.dumps([task.labels, task.source])  # fail here, not halfway through the transaction
        self.check_writable()
        blobs = {kind: Blob(hashlib.sha256(data).hexdigest(), data) for kind, data in files.items()}
        added = [b for b in blobs.values() if not self._present(b)]
        insertion = Insertion(adapter_id, created_at, tuple(alias_names), imported=True, task=task)
        try:
            self._write_then_insert(new, blobs, insertion)
        except Exception:
            for blob in added:  # under the blob lock: a concurrent register of the same bytes re-writes its file
                self._remove_if_unreferenced(blob.sha256)
            raise
        return self.get(adapter_id)

    def _write_then_insert(self, new: NewAdapter, blobs: dict[str, Blob], insertion: Insertion) -> None:
        """Files first (atomic, fsynced), then the rows; no file is written inside the transaction."""
        for _ in range(WRITE_ATTEMPTS):
            needed = sum(blob.size for blob in blobs.values())
            for blob in blobs.values():
                self._put(blob, needed)
            try:
                self._rows.insert_adapter(new, blobs, insertion, present=self._present)
                return
            except BlobVanished:
                continue  # a concurrent delete or gc removed identical bytes before our lock: write them again
        raise RegistryError(f"the artifact files of {new.task} kept vanishing from {self.store.root}",
                            hint="is another process removing files from the artifact root?")

    def _put(self, blob: Blob, needed: int) -> None:
        """Write one file; ``needed``: the bytes of all of the adapter's files, for the error message."""
        try:
            self.store.put(blob)
        except OSError as err:  # a full disk (ENOSPC, EDQUOT), a read-only root: one line that names the path
            raise ArtifactWriteError(self.store.path(blob.relpath), needed, err) from None

    def _present(self, blob: Blob) -> bool:
        return self.store.path(blob.relpath).exists()

    # -- read ---------------------------------------------------------------------------------------------------

    def resolve(self, ref: Ref) -> AdapterRecord:
        """The adapter ``ref`` names: an id prefix, ``TASK@3`` / ``TASK@v3``, ``TASK@latest``, ``TASK@best``,
        ``TASK@ALIAS`` (or an AdapterRecord, re-read). ``RegistryError`` if none (or an ambiguous prefix)."""
        return self._rows.resolve(ref)

    def get(self, adapter_id: str) -> AdapterRecord:
        """The adapter with exactly this id; ``RegistryError`` if none."""
        return self._rows.get(adapter_id)

    def list_adapters(self, query: AdapterQuery | None = None, **filters: Any) -> list[AdapterRecord]:
        """Adapters matching every filter given: an ``AdapterQuery``, or its fields as keywords
        (``list_adapters(task="sst2", sort="accuracy", limit=10)``). ``TypeError`` for an unknown keyword or both
        forms at once; ``RegistryError`` for an unknown task."""
        if query is None:
            query = AdapterQuery(**filters)
        elif filters:
            raise TypeError("list_adapters takes an AdapterQuery or keyword filters, not both")
        return self._rows.list_adapters(query)

    def parents(self, ref: Ref) -> list[AdapterRecord]:
        """The adapters ``ref`` was initialised from, in the order given at registration."""
        return self._rows.parents(ref)

    def children(self, ref: Ref) -> list[AdapterRecord]:
        """The adapters that name ``ref`` as a parent, oldest first."""
        return self._rows.children(ref)

    def load_servable(self, ref: Ref) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and str->str metadata of the adapter's servable file, after checking its sha256
        (``RegistryError`` naming the adapter and the file if it is missing or corrupt)."""
        loaded = self._load(ref, "servable")
        assert loaded is not None  # every adapter has a servable artifact
        return loaded

    def load_training_state(self, ref: Ref) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """Same as ``load_servable`` for the training state (optimizer, RNG, ...); None if none was stored."""
        return self._load(ref, "training_state")

    def artifact_bytes(self, ref: Ref, kind: str = "servable") -> bytes | None:
        """The exact bytes of one artifact file (for export), after checking its sha256; None if there is none."""
        return self._load(ref, kind, raw=True)

    def _load(self, ref: Ref, kind: str, raw: bool = False):
        rec = self.resolve(ref)
        art = rec.artifact(kind)
        if art is None:
            return None
        read = self.store.read_bytes if raw else self.store.read
        try:
            return read(os.path.relpath(art.path, self.store.root), art.sha256)
        except ArtifactError as err:
            raise RegistryError(
                f"cannot load adapter {rec.ref} ({rec.id[:8]}): {kind} {err}",
                hint=f"restore the file from a backup, or remove the adapter with `eptctl rm {rec.ref}`",
            ) from None

    # -- change -------------------------------------------------------------------------------------------------

    def add_metrics(self, ref: Ref, values: list[MetricValue]) -> AdapterRecord:
        """Record metrics for an existing adapter (``eptctl eval``); same (split, name, step) replaces.
        ``RegistryError`` for a non-finite value or an adapter deleted meanwhile."""
        check_metrics(values)
        adapter_id = self._rows.adapter_id(ref)
        self._rows.add_metrics(adapter_id, _name(ref), values)
        return self.get(adapter_id)

    def set_alias(self, ref: Ref, alias: str) -> AdapterRecord:
        """Point ``TASK@alias`` at this adapter (moving it if it pointed elsewhere); reserved names are refused."""
        refs.check_alias(alias)
        adapter_id = self._rows.adapter_id(ref)
        self._rows.set_alias(adapter_id, _name(ref), alias)
        return self.get(adapter_id)

    def remove_alias(self, task: str, alias: str) -> None:
        """Remove ``TASK@alias``; ``RegistryError`` if the task has no such alias."""
        if not self._rows.remove_alias(task, alias):
            raise RegistryError(f"task {task!r} has no alias {alias!r}", hint=f"see `eptctl list --task {task}`")

    def add_tags(self, ref: Ref, new_tags: list[str]) -> AdapterRecord:
        """Add free-form tags (already present ones are kept once)."""
        for t in new_tags:
            refs.check_tag(t)
        adapter_id = self._rows.adapter_id(ref)
        self._rows.add_tags(adapter_id, _name(ref), new_tags)
        return self.get(adapter_id)

    def remove_tags(self, ref: Ref, old_tags: list[str]) -> AdapterRecord:
        """Remove tags (absent ones are ignored)."""
        adapter_id = self._rows.adapter_id(ref)
        self._rows.remove_tags(adapter_id, _name(ref), old_tags)
        return self.get(adapter_id)

    def archive(self, ref: Ref, archived: bool = True) -> AdapterRecord:
        """Hide an adapter from listings, @latest and @best; it still resolves by id, version and alias."""
        adapter_id = self._rows.adapter_id(ref)
        self._rows.set_archived(adapter_id, _name(ref), archived)
        return self.get(adapter_id)

    # -- maintenance --------------------------------------------------------------------------------------------

    def delete(self, ref: Ref, force: bool = False) -> AdapterRecord:
        """Remove the adapter's rows, then each of its files that no other adapter references.

        An adapter other adapters were initialised from is refused unless ``force`` (they keep its id in their lineage).
        """
        rec = self.resolve(ref)
        self._rows.delete_adapter(rec, force)
        for art in rec.artifacts:  # after the commit: a crash here leaves an orphan file for gc, never a dead row
            self._remove_if_unreferenced(art.sha256)
        return rec

    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> list[Path]:
        """Remove artifact files no adapter references, and temp files left by crashed writers.

        Files younger than ``grace_seconds`` are kept: a concurrent ``register`` writes its file before it commits
        its row. Returns the paths removed (or, with ``dry_run``, that would be).
        """
        referenced = self._rows.referenced_sha256s()
        removed = []
        for sha, path in self.store.files(older_than=grace_seconds):
            if sha in referenced:
                continue
            if dry_run:
                removed.append(path)
            elif sha is None:  # a temp file of a writer that died before its rename
                path.unlink(missing_ok=True)
                removed.append(path)
            elif self._remove_if_unreferenced(sha):
                removed.append(path)
        return removed

    def scrub_secrets(self, dry_run: bool = False) -> list[AdapterRecord]:
        """Mask the secrets (URL passwords, ``--token`` values...; ``eptctl.core.secrets``) in the run command lines
        stored before eptctl masked them on the way in. Returns the adapters whose command line held one (with
        ``dry_run``: would be rewritten; nothing is written). Idempotent: a second run finds none."""
        ids = self._rows.scrub_command_lines(mask_secrets, dry_run)
        return [self.get(adapter_id) for adapter_id in ids]

    def _remove_if_unreferenced(self, sha256: str) -> Path | None:
        """Unlink the file of ``sha256`` if no row references it, under the same lock ``register`` takes."""
        return self._rows.remove_if_unreferenced(sha256, lambda: self.store.remove(Blob(sha256, b"").relpath))


def _name(ref: Ref) -> str:
    """How an adapter is called in an error message: its TASK@VERSION, or the reference as given."""
    return ref.ref if isinstance(ref, AdapterRecord) else ref
