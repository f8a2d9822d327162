"""Reads of the SQLAlchemy store: tasks, references, records, listings and lineage, each in one snapshot."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from registry import migrate, queries, ranking, refs
from registry.db import Database, RegistryError
from registry.interface import Ref, RegistryReads
from registry.records import AdapterQuery, AdapterRecord, TaskRecord
from registry.schema import adapters, lineage, tags, tasks


class SqlReads(RegistryReads):
    """``RegistryReads`` over a ``Database``; records carry artifact paths under ``root``."""

    def __init__(self, db: Database, root: Path | str):
        self.db = db
        self.root = root  # rows keep paths relative to the artifact root; records show them absolute

    def get_task(self, name: str) -> TaskRecord:
        with self.db.read() as conn:
            return queries.task_record(refs.task_row(conn, name))

    def list_tasks(self) -> list[TaskRecord]:
        with self.db.read() as conn:
            return [queries.task_record(r) for r in conn.execute(sa.select(tasks).order_by(tasks.c.name))]

    def adapter_id(self, ref: Ref) -> str:
        with self.db.read() as conn:
            return _id(conn, ref)

    def resolve(self, ref: Ref) -> AdapterRecord:
        with self.db.read() as conn:
            return self._record(conn, _id(conn, ref))

    def get(self, adapter_id: str) -> AdapterRecord:
        with self.db.read() as conn:
            return self._record(conn, adapter_id)

    def list_adapters(self, query: AdapterQuery) -> list[AdapterRecord]:
        stmt, where, order = _listing(query)
        with self.db.read() as conn:
            if query.task is not None:
                where.append(adapters.c.task_id == refs.task_row(conn, query.task).id)
            if not query.include_archived:
                where.append(adapters.c.status == "ready")
            return queries.build_records(conn, stmt.where(*where).order_by(*order).limit(query.limit), self.root)

    def parents(self, ref: Ref) -> list[AdapterRecord]:
        with self.db.read() as conn:
            rec = self._record(conn, _id(conn, ref))
            return self._records(conn, [p.parent_id for p in rec.parents])

    def children(self, ref: Ref) -> list[AdapterRecord]:
        with self.db.read() as conn:
            ids = child_ids(conn, _id(conn, ref))
            return sorted(self._records(conn, ids), key=lambda r: r.created_at)

    def current_revision(self) -> str | None:
        with self.db.read() as conn:
            return migrate.revision_of(conn)

    def _record(self, conn: Connection, adapter_id: str) -> AdapterRecord:
        found = self._records(conn, [adapter_id])
        if not found:  # e.g. an AdapterRecord whose adapter was deleted since
            raise RegistryError(f"no adapter with id {adapter_id!r}", hint="see `eptctl list`")
        return found[0]

    def _records(self, conn: Connection, ids: list[str]) -> list[AdapterRecord]:
        """Records for ``ids``, in that order (missing ids are left out)."""
        stmt = queries.adapter_select().where(adapters.c.id.in_(ids))
        found = {r.id: r for r in queries.build_records(conn, stmt, self.root)}
        return [found[i] for i in ids if i in found]


def child_ids(conn: Connection, adapter_id: str) -> list[str]:
    """Ids of the adapters that name ``adapter_id`` as a parent."""
    return list(conn.execute(sa.select(lineage.c.child_id).where(lineage.c.parent_id == adapter_id)).scalars())


def _id(conn: Connection, ref: Ref) -> str:
    return ref.id if isinstance(ref, AdapterRecord) else refs.resolve_id(conn, ref)


def _listing(query: AdapterQuery) -> tuple[sa.Select, list, list]:
    """The select, its filters (the task and status filters need a connection: the caller adds them) and order."""
    where = []
    if query.method is not None:
        where.append(adapters.c.method == query.method)
    if query.backbone is not None:
        where.append(queries.backbone_match(query.backbone))
    if query.tag is not None:
        where.append(adapters.c.id.in_(sa.select(tags.c.adapter_id).where(tags.c.tag == query.tag)))
    stmt = queries.adapter_select()
    values = {}  # metric key -> its value, joined in once however often it is named
    for key in [*(query.min_metric or {}), *([] if query.sort == "created" else [query.sort])]:
        if key not in values:
            stmt, values[key] = ranking.ranked_value(stmt, key)
    for key, threshold in (query.min_metric or {}).items():
        where.append(values[key] >= threshold)
    if query.sort == "created":
        cols = [adapters.c.created_at, adapters.c.version, adapters.c.id]
        order = [c.desc() if query.descending else c.asc() for c in cols]
    else:
        value = values[query.sort]
        order = [(value.desc() if query.descending else value.asc()).nulls_last(), adapters.c.created_at.desc()]
    return stmt, where, order
