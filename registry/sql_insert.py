"""The rows of one new adapter, inserted inside the caller's write transaction (``register`` and ``import``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from eptctl.core.secrets import mask_secrets
from registry import ranking
from registry.db import RegistryError, is_sqlite, lock_blob
from registry.interface import BlobVanished, Insertion
from registry.records import BackboneFingerprint, NewAdapter, TaskRecord
from registry.schema import adapters, aliases, artifacts, backbones, lineage, runs, tags, tasks
from registry.store import Blob


def insert_adapter_rows(conn: Connection, new: NewAdapter, blobs: dict[str, Blob], insertion: Insertion,
                        present: Callable[[Blob], bool]) -> None:
    """Take the task's next version and insert the adapter with everything it references (see
    ``RegistryWrites.insert_adapter``). Raises ``BlobVanished`` or ``RegistryError``; the transaction then rolls back."""
    adapter_id = insertion.adapter_id
    if insertion.imported and conn.execute(sa.select(adapters.c.id).where(adapters.c.id == adapter_id)).first():
        raise already_present(adapter_id)
    # The version counter lives on the task row: the UPDATE locks that row (PostgreSQL) inside the write
    # lock (SQLite), and a rollback hands the number back, so versions stay gapless under any concurrency.
    if insertion.task is not None:
        create_task_if_missing(conn, insertion.task)
    task_id = conn.execute(sa.select(tasks.c.id).where(tasks.c.name == new.task)).scalar_one()
    conn.execute(tasks.update().where(tasks.c.id == task_id).values(last_version=tasks.c.last_version + 1))
    version = conn.execute(sa.select(tasks.c.last_version).where(tasks.c.id == task_id)).scalar_one()
    for blob in sorted(blobs.values(), key=lambda b: b.sha256):
        lock_blob(conn, blob.sha256)
        if not present(blob):  # a concurrent delete or gc removed identical bytes after they were written
            raise BlobVanished(blob)
    _check_parents(conn, new)
    _insert_adapter(conn, task_id, version, new, blobs, insertion)
    if insertion.alias_names:
        taken = set(conn.execute(sa.select(aliases.c.name).where(aliases.c.task_id == task_id)).scalars())
        free = [a for a in dict.fromkeys(insertion.alias_names) if a not in taken]
        if free:
            conn.execute(aliases.insert(), [{"task_id": task_id, "name": a, "adapter_id": adapter_id} for a in free])


def already_present(adapter_id: str) -> RegistryError:
    """The error for an imported id this registry already holds."""
    return RegistryError(f"adapter {adapter_id} is already in this registry", hint=f"see `eptctl show {adapter_id[:8]}`")


def _check_parents(conn: Connection, new: NewAdapter) -> None:
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


def _insert_adapter(conn: Connection, task_id: int, version: int, new: NewAdapter, blobs: dict[str, Blob],
                    insertion: Insertion) -> None:
    adapter_id = insertion.adapter_id
    conn.execute(
        adapters.insert().values(
            id=adapter_id,
            task_id=task_id,
            version=version,
            method=new.method,
            config=new.config,
            status="ready",
            created_at=insertion.created_at or datetime.now(timezone.utc),
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
        # secrets never reach a row, whoever built the RunInfo (a library caller, an imported bundle)
        run = {**asdict(new.run), "command_line": mask_secrets(new.run.command_line)}
        conn.execute(runs.insert().values(adapter_id=adapter_id, **run))


def _backbone_id(conn: Connection, fp: BackboneFingerprint) -> int:
    """The id of this fingerprint's row, inserted if new (ON CONFLICT: concurrent registers may race on it)."""
    fields = asdict(fp)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    insert = sqlite_insert if is_sqlite(conn) else pg_insert
    conn.execute(insert(backbones).values(key=key, **fields).on_conflict_do_nothing(index_elements=["key"]))
    return conn.execute(sa.select(backbones.c.id).where(backbones.c.key == key)).scalar_one()


def create_task_if_missing(conn: Connection, task: TaskRecord) -> None:
    """Insert ``task`` unless a task of that name exists (an existing task is never changed)."""
    if conn.execute(sa.select(tasks.c.id).where(tasks.c.name == task.name)).first() is None:
        conn.execute(tasks.insert().values({**asdict(task), "created_at": datetime.now(timezone.utc),
                                            "last_version": 0}))
