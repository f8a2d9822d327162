"""``Registry``: the narrow API over the database and the artifact store. It returns dataclasses, never ORM rows."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from eptctl import __version__
from eptctl.core.home import eptctl_home
from registry import migrate, queries, ranking, refs
from registry.db import Database, RegistryError, is_sqlite, lock_blob, resolve_url
from registry.records import AdapterRecord, BackboneFingerprint, MetricValue, NewAdapter, TaskRecord
from registry.schema import adapters, aliases, artifacts, backbones, lineage, runs, tags, tasks
from registry.store import ARTIFACTS_ENV, ArtifactError, Blob, open_store, serialize

if TYPE_CHECKING:
    import torch

# Test hook: die by SIGKILL (no cleanup at all) once the artifact files are on disk: "1" before the transaction
# starts, "in-transaction" after the rows are inserted and before the commit.
CRASH_ENV = "EPTCTL_TEST_CRASH_AFTER_ARTIFACT"
FORMAT_VERSION = "1"  # of the eptctl.* keys in the safetensors metadata

Ref = str | AdapterRecord


class Registry:
    """Every adapter eptctl trains: rows in SQLite or PostgreSQL, weights in a content-addressed file store.

    Example::

        reg = Registry()  # $EPTCTL_REGISTRY_URL, else sqlite:///$EPTCTL_HOME/registry.db
        rec = reg.resolve("rt-polarity@best")
        tensors, metadata = reg.load_servable(rec)
    """

    def __init__(self, url: str | None = None, artifacts: str | Path | None = None):
        self._db = Database(resolve_url(url))
        self.display_url = self._db.display_url  # password masked: the only form ever shown
        # Rows keep paths relative to this root, so hosts that mount a shared root at different places agree.
        self.store = open_store(artifacts or os.environ.get(ARTIFACTS_ENV) or eptctl_home() / "artifacts")
        try:
            migrate.ensure_schema(self._db, url)
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.display_url!r})"

    def close(self) -> None:
        self._db.close()

    # -- schema -------------------------------------------------------------------------------------------------

    def upgrade(self) -> tuple[str | None, str | None]:
        return migrate.upgrade(self._db.url)

    def current_revision(self) -> str | None:
        with self._db.read() as conn:
            return migrate.revision_of(conn)

    # -- tasks --------------------------------------------------------------------------------------------------

    def ensure_task(self, task: TaskRecord) -> TaskRecord:
        """Create the task if it is missing; return the stored one (an existing task is never changed)."""
        refs.check_task_name(task.name)
        json.dumps([task.labels, task.source])  # fail here, not halfway through a transaction

        def create(conn: Connection) -> None:
            if conn.execute(sa.select(tasks.c.id).where(tasks.c.name == task.name)).first() is None:
                conn.execute(tasks.insert().values({**asdict(task), "created_at": _now(), "last_version": 0}))

        try:
            self._db.write(create)
        except sa.exc.IntegrityError:
            pass  # PostgreSQL: another process created it between our check and our insert
        return self.get_task(task.name)

    def get_task(self, name: str) -> TaskRecord:
        with self._db.read() as conn:
            return queries.task_record(refs.task_row(conn, name))

    def list_tasks(self) -> list[TaskRecord]:
        with self._db.read() as conn:
            return [queries.task_record(r) for r in conn.execute(sa.select(tasks).order_by(tasks.c.name))]

    # -- register -----------------------------------------------------------------------------------------------

    def register(self, new: NewAdapter) -> AdapterRecord:
        """Write the artifact files, then the adapter with its metrics, lineage, tags and run in one transaction.

        A crash in between leaves an unreferenced file (removed by ``gc``), never a row without its file.
        """
        _check_new(new)
        task = self.get_task(new.task)
        blobs = {"servable": serialize(new.servable, _file_metadata(new, "servable", new.metadata))}
        if new.training_state is not None:
            meta = _file_metadata(new, "training_state", new.training_metadata)
            blobs["training_state"] = serialize(new.training_state, meta)
        for blob in blobs.values():
            self.store.put(blob)
        _crash_point("1")
        adapter_id = uuid.uuid4().hex

        def insert(conn: Connection) -> None:
            self._insert_versioned(conn, task.name, adapter_id, new, blobs)
            _crash_point("in-transaction")

        self._db.write(insert)
        return self.get(adapter_id)

    def import_adapter(
        self,
        new: NewAdapter,
        *,
        adapter_id: str,
        created_at: datetime,
        files: dict[str, bytes],
        alias_names: Sequence[str] = (),
    ) -> AdapterRecord:
        """Register an adapter exported from another registry, keeping its id, its creation time and the exact bytes
        of its files (``files[kind]``, so the sha256 survives; ``new.servable`` and ``new.training_state`` are not
        used). It gets the task's next version here. Each of ``alias_names`` still free in this task is set; the
        others are left as they are. An id already present is refused, and on any failure the files this call
        added are removed again.
        """
        _check_new(new, tensors=False)
        if not re.fullmatch(r"[0-9a-f]{32}", adapter_id):
            raise ValueError(f"adapter id must be 32 lowercase hex digits, got {adapter_id!r}")
        if "servable" not in files or not set(files) <= {"servable", "training_state"}:
            raise ValueError(f"files must hold 'servable' and optionally 'training_state', got {sorted(files)}")
        for name in alias_names:
            refs.check_alias(name)
        created_at = created_at if created_at.tzinfo else created_at.replace(tzinfo=timezone.utc)
        task = self.get_task(new.task)
        blobs = {kind: Blob(hashlib.sha256(data).hexdigest(), data) for kind, data in files.items()}
        added = [b for b in blobs.values() if not self.store.path(b.relpath).exists()]
        for blob in blobs.values():
            self.store.put(blob)

        def insert(conn: Connection) -> None:
            if conn.execute(sa.select(adapters.c.id).where(adapters.c.id == adapter_id)).first() is not None:
                raise RegistryError(f"adapter {adapter_id} is already in this registry",
                                    hint=f"see `eptctl show {adapter_id[:8]}`")
            task_id = self._insert_versioned(conn, task.name, adapter_id, new, blobs, created_at)
            taken = set(conn.execute(sa.select(aliases.c.name).where(aliases.c.task_id == task_id)).scalars())
            free = [a for a in dict.fromkeys(alias_names) if a not in taken]
            if free:
                rows = [{"task_id": task_id, "name": a, "adapter_id": adapter_id} for a in free]
                conn.execute(aliases.insert(), rows)

        try:
            self._db.write(insert)
        except Exception as exc:
            for blob in added:  # under the blob lock: a concurrent register of the same bytes re-writes its file
                self._remove_if_unreferenced(blob.sha256)
            if isinstance(exc, sa.exc.IntegrityError):  # PostgreSQL: a concurrent import of the same id won
                raise RegistryError(f"adapter {adapter_id} is already in this registry",
                                    hint=f"see `eptctl show {adapter_id[:8]}`") from None
            raise
        return self.get(adapter_id)

    def _insert_versioned(self, conn: Connection, task_name: str, adapter_id: str, new: NewAdapter,
                          blobs: dict[str, Blob], created_at: datetime | None = None) -> int:
        """Take the task's next version and insert the adapter with everything it references; returns the task id."""
        # The version counter lives on the task row: the UPDATE locks that row (PostgreSQL) inside the write
        # lock (SQLite), and a rollback hands the number back, so versions stay gapless under any concurrency.
        task_id = conn.execute(sa.select(tasks.c.id).where(tasks.c.name == task_name)).scalar_one()
        conn.execute(tasks.update().where(tasks.c.id == task_id).values(last_version=tasks.c.last_version + 1))
        version = conn.execute(sa.select(tasks.c.last_version).where(tasks.c.id == task_id)).scalar_one()
        for blob in sorted(blobs.values(), key=lambda b: b.sha256):
            lock_blob(conn, blob.sha256)
            self.store.put(blob)  # a concurrent delete or gc may have removed identical bytes meanwhile
        self._check_parents(conn, new)
        self._insert_adapter(conn, adapter_id, task_id, version, new, blobs, created_at)
        return task_id

    def _check_parents(self, conn: Connection, new: NewAdapter) -> None:
        wanted = {p.parent_id for p in new.parents}
        if not wanted:
            return
        # FOR UPDATE (PostgreSQL): a parent cannot be deleted between this check and the lineage insert
        query = sa.select(adapters.c.id).where(adapters.c.id.in_(wanted)).with_for_update()
        found = set(conn.execute(query).scalars())
        if wanted - found:
            raise RegistryError(
                f"unknown parent adapter(s): {', '.join(sorted(wanted - found))} (never registered, or deleted "
                "meanwhile); nothing was registered",
                hint="parents are full adapter ids of registered adapters",
            )

    def _insert_adapter(self, conn, adapter_id, task_id, version, new: NewAdapter, blobs: dict[str, Blob],
                        created_at: datetime | None = None) -> None:
        conn.execute(
            adapters.insert().values(
                id=adapter_id,
                task_id=task_id,
                version=version,
                method=new.method,
                config=new.config,
                status="ready",
                created_at=created_at or _now(),
                description=new.description,
                params_by_group=dict(new.params_by_group),
                trainable_params=sum(new.params_by_group.values()),
                backbone_id=_backbone_id(conn, new.backbone),
                summary=new.summary,
            )
        )
        conn.execute(
            artifacts.insert(),
            [
                {"adapter_id": adapter_id, "kind": k, "sha256": b.sha256, "size": b.size, "path": b.relpath}
                for k, b in blobs.items()
            ],
        )
        ranking.write_metrics(conn, adapter_id, new.metrics, new_adapter=True)
        if new.parents:
            conn.execute(
                lineage.insert(),
                [
                    {"child_id": adapter_id, "parent_id": p.parent_id, "position": i, "weight": p.weight, "how": p.how}
                    for i, p in enumerate(new.parents)
                ],
            )
        if new.tags:
            conn.execute(tags.insert(), [{"adapter_id": adapter_id, "tag": t} for t in sorted(set(new.tags))])
        if new.run is not None:
            conn.execute(runs.insert().values(adapter_id=adapter_id, **asdict(new.run)))

    # -- read ---------------------------------------------------------------------------------------------------

    def resolve(self, ref: Ref) -> AdapterRecord:
        """The adapter ``ref`` names: an id prefix, ``TASK@3`` / ``TASK@v3``, ``TASK@latest``, ``TASK@best``,
        ``TASK@ALIAS`` (or an AdapterRecord, re-read)."""
        with self._db.read() as conn:
            return self._record(conn, self._id(conn, ref))

    def get(self, adapter_id: str) -> AdapterRecord:
        """The adapter with exactly this id."""
        with self._db.read() as conn:
            return self._record(conn, adapter_id)

    def list_adapters(
        self,
        task: str | None = None,
        backbone: str | None = None,
        method: str | None = None,
        tag: str | None = None,
        min_metric: dict[str, float] | None = None,
        sort: str = "created",
        descending: bool = True,
        limit: int | None = None,
        include_archived: bool = False,
    ) -> list[AdapterRecord]:
        """Adapters matching every filter given.

        backbone: model name, or a prefix (8+ hex digits) of the embedding sha256. Metric keys (``sort`` and
        ``min_metric``) are a metric name, ranked on "validation" else "test", or ``SPLIT:NAME``. Adapters without
        the sort metric come last; ``min_metric`` drops them.
        """
        where = []
        if method is not None:
            where.append(adapters.c.method == method)
        if backbone is not None:
            where.append(queries.backbone_match(backbone))
        if tag is not None:
            where.append(adapters.c.id.in_(sa.select(tags.c.adapter_id).where(tags.c.tag == tag)))
        q = queries.adapter_select()
        values = {}  # metric key -> its value, joined in once however often it is named
        for key in [*(min_metric or {}), *([] if sort == "created" else [sort])]:
            if key not in values:
                q, values[key] = ranking.ranked_value(q, key)
        for key, threshold in (min_metric or {}).items():
            where.append(values[key] >= threshold)
        if sort == "created":
            cols = [adapters.c.created_at, adapters.c.version, adapters.c.id]
            order = [c.desc() if descending else c.asc() for c in cols]
        else:
            value = values[sort]
            order = [(value.desc() if descending else value.asc()).nulls_last(), adapters.c.created_at.desc()]
        with self._db.read() as conn:
            if task is not None:
                where.append(adapters.c.task_id == refs.task_row(conn, task).id)
            if not include_archived:
                where.append(adapters.c.status == "ready")
            return queries.build_records(conn, q.where(*where).order_by(*order).limit(limit), self.store.root)

    def parents(self, ref: Ref) -> list[AdapterRecord]:
        """The adapters ``ref`` was initialised from, in the order given at registration."""
        with self._db.read() as conn:
            rec = self._record(conn, self._id(conn, ref))
            return self._records(conn, [p.parent_id for p in rec.parents])

    def children(self, ref: Ref) -> list[AdapterRecord]:
        """The adapters that name ``ref`` as a parent, oldest first."""
        with self._db.read() as conn:
            ids = self._child_ids(conn, self._id(conn, ref))
            return sorted(self._records(conn, ids), key=lambda r: r.created_at)

    def load_servable(self, ref: Ref) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and str->str metadata of the adapter's servable file, after checking its sha256."""
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
        """Record metrics for an existing adapter (``eptctl eval``); same (split, name, step) replaces."""
        _check_metrics(values)
        adapter_id = self._resolve_id(ref)

        def write(conn: Connection) -> None:
            _still_there(conn, adapter_id, ref, "evaluated", "metrics not stored")
            ranking.write_metrics(conn, adapter_id, values)

        self._db.write(write)
        return self.get(adapter_id)

    def set_alias(self, ref: Ref, alias: str) -> AdapterRecord:
        """Point ``TASK@alias`` at this adapter (moving it if it pointed elsewhere)."""
        refs.check_alias(alias)
        adapter_id = self._resolve_id(ref)

        def move(conn: Connection) -> None:
            task_id = _still_there(conn, adapter_id, ref, "aliased", f"alias {alias!r} not set")
            conn.execute(aliases.delete().where(aliases.c.task_id == task_id, aliases.c.name == alias))
            conn.execute(aliases.insert().values(task_id=task_id, name=alias, adapter_id=adapter_id))

        self._db.write(move)
        return self.get(adapter_id)

    def remove_alias(self, task: str, alias: str) -> None:
        def remove(conn: Connection) -> int:
            task_id = refs.task_row(conn, task).id
            return conn.execute(aliases.delete().where(aliases.c.task_id == task_id, aliases.c.name == alias)).rowcount

        if not self._db.write(remove):
            raise RegistryError(f"task {task!r} has no alias {alias!r}", hint=f"see `eptctl list --task {task}`")

    def add_tags(self, ref: Ref, new_tags: list[str]) -> AdapterRecord:
        for t in new_tags:
            refs.check_tag(t)
        adapter_id = self._resolve_id(ref)

        def add(conn: Connection) -> None:
            _still_there(conn, adapter_id, ref, "tagged", "tags not added")
            have = set(conn.execute(sa.select(tags.c.tag).where(tags.c.adapter_id == adapter_id)).scalars())
            missing = sorted(set(new_tags) - have)
            if missing:
                conn.execute(tags.insert(), [{"adapter_id": adapter_id, "tag": t} for t in missing])

        self._db.write(add)
        return self.get(adapter_id)

    def remove_tags(self, ref: Ref, old_tags: list[str]) -> AdapterRecord:
        adapter_id = self._resolve_id(ref)

        def remove(conn: Connection) -> None:
            _still_there(conn, adapter_id, ref, "untagged", "tags not removed")
            conn.execute(tags.delete().where(tags.c.adapter_id == adapter_id, tags.c.tag.in_(old_tags)))

        self._db.write(remove)
        return self.get(adapter_id)

    def archive(self, ref: Ref, archived: bool = True) -> AdapterRecord:
        """Hide an adapter from listings, @latest and @best; it still resolves by id, version and alias."""
        adapter_id = self._resolve_id(ref)
        status = "archived" if archived else "ready"
        update = adapters.update().where(adapters.c.id == adapter_id).values(status=status)

        def write(conn: Connection) -> None:
            _still_there(conn, adapter_id, ref, "archived" if archived else "restored", "status not changed")
            conn.execute(update)

        self._db.write(write)
        return self.get(adapter_id)

    def delete(self, ref: Ref, force: bool = False) -> AdapterRecord:
        """Remove the adapter's rows, then each of its files that no other adapter references.

        An adapter other adapters were initialised from is refused unless ``force`` (they keep its id in their lineage).
        """
        rec = self.resolve(ref)

        def remove(conn: Connection) -> None:
            kids = self._child_ids(conn, rec.id)
            if kids and not force:
                raise RegistryError(
                    f"adapter {rec.ref} is a parent of {len(kids)} other adapter(s)",
                    hint=f"see `eptctl show {rec.ref}`; pass --force to delete it anyway (children keep its id)",
                )
            conn.execute(adapters.delete().where(adapters.c.id == rec.id))  # cascades to every child table

        self._db.write(remove)
        for art in rec.artifacts:  # after the commit: a crash here leaves an orphan file for gc, never a dead row
            self._remove_if_unreferenced(art.sha256)
        return rec

    def gc(self, grace_seconds: float = 3600, dry_run: bool = False) -> list[Path]:
        """Remove artifact files no adapter references, and temp files left by crashed writers.

        Files younger than ``grace_seconds`` are kept: a concurrent ``register`` writes its file before it commits
        its row. Returns the paths removed (or, with ``dry_run``, that would be).
        """
        with self._db.read() as conn:
            referenced = set(conn.execute(sa.select(artifacts.c.sha256).distinct()).scalars())
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

    # -- helpers ------------------------------------------------------------------------------------------------

    def _remove_if_unreferenced(self, sha256: str) -> Path | None:
        """Unlink the file of ``sha256`` if no row references it, under the same lock ``register`` takes."""

        def check_and_remove(conn: Connection) -> Path | None:
            lock_blob(conn, sha256)
            if conn.execute(sa.select(artifacts.c.sha256).where(artifacts.c.sha256 == sha256).limit(1)).first():
                return None
            return self.store.remove(Blob(sha256, b"").relpath)

        return self._db.write(check_and_remove)

    def _id(self, conn: Connection, ref: Ref) -> str:
        return ref.id if isinstance(ref, AdapterRecord) else refs.resolve_id(conn, ref)

    def _resolve_id(self, ref: Ref) -> str:
        with self._db.read() as conn:
            return self._id(conn, ref)

    def _record(self, conn: Connection, adapter_id: str) -> AdapterRecord:
        found = self._records(conn, [adapter_id])
        if not found:  # e.g. an AdapterRecord whose adapter was deleted since
            raise RegistryError(f"no adapter with id {adapter_id!r}", hint="see `eptctl list`")
        return found[0]

    def _records(self, conn: Connection, ids: list[str]) -> list[AdapterRecord]:
        """Records for ``ids``, in that order (missing ids are left out)."""
        stmt = queries.adapter_select().where(adapters.c.id.in_(ids))
        found = {r.id: r for r in queries.build_records(conn, stmt, self.store.root)}
        return [found[i] for i in ids if i in found]

    @staticmethod
    def _child_ids(conn: Connection, adapter_id: str) -> list[str]:
        return list(conn.execute(sa.select(lineage.c.child_id).where(lineage.c.parent_id == adapter_id)).scalars())


def _still_there(conn: Connection, adapter_id: str, ref: Ref, doing: str, lost: str) -> int:
    """The adapter's task id, with its row locked for this transaction (PostgreSQL: FOR UPDATE; SQLite holds the
    write lock); a ``RegistryError`` if it was deleted since the caller resolved it, so a write that follows a read
    never dies on a foreign key."""
    query = sa.select(adapters.c.task_id).where(adapters.c.id == adapter_id).with_for_update()
    task_id = conn.execute(query).scalar()
    if task_id is None:
        name = ref.ref if isinstance(ref, AdapterRecord) else ref
        raise RegistryError(f"{name} was deleted while it was being {doing}; {lost}",
                            hint="see `eptctl list`; nothing was written")
    return task_id


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _backbone_id(conn: Connection, fp: BackboneFingerprint) -> int:
    """The id of this fingerprint's row, inserted if new (ON CONFLICT: concurrent registers may race on it)."""
    fields = asdict(fp)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    insert = sqlite_insert if is_sqlite(conn) else pg_insert
    conn.execute(insert(backbones).values(key=key, **fields).on_conflict_do_nothing(index_elements=["key"]))
    return conn.execute(sa.select(backbones.c.id).where(backbones.c.key == key)).scalar_one()


def _file_metadata(new: NewAdapter, kind: str, extra: dict[str, str]) -> dict[str, str]:
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


def _check_new(new: NewAdapter, tensors: bool = True) -> None:
    """Programming errors in what the trainer hands over fail before any file is written."""
    if not new.method:
        raise ValueError("NewAdapter.method is empty")
    if tensors and not new.servable:
        raise ValueError("NewAdapter.servable has no tensors")
    json.dumps([new.config, new.summary, new.run and asdict(new.run)])  # JSON-serialisable, or TypeError here
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in new.params_by_group.items()):
        raise ValueError("NewAdapter.params_by_group must map group names to int counts")
    for t in new.tags:
        refs.check_tag(t)
    _check_metrics(new.metrics)


def _check_metrics(values: list[MetricValue]) -> None:
    for m in values:
        if not math.isfinite(m.value):
            # SQLite would store NaN as NULL; a diverged value is better refused loudly than ranked silently.
            raise RegistryError(f"metric {m.split}:{m.name} is {m.value}", hint="only finite metric values are stored")
