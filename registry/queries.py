"""Rows to records, in bulk.

Reading N adapters costs a fixed number of queries (the adapters, the backbones, then one per child table),
never one per adapter. Listing 10,000 adapters is dominated by building Python objects, so rows are fetched as
plain DBAPI tuples (no column read here needs a type conversion beyond the two handled below), child records are
built column-wise, JSON fields are decoded only when read (``registry.stored``), and the cyclic GC is paused
while the records are built.
"""

from __future__ import annotations

import gc
import os
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from registry.records import (
    AdapterRecord,
    ArtifactRecord,
    BackboneFingerprint,
    MetricValue,
    ParentLink,
    TaskRecord,
)
from registry.schema import adapters, aliases, artifacts, backbones, lineage, metrics, runs, tags, tasks
from registry.stored import stored_record

# Up to this many adapters, children are selected by an IN (...) list of their ids; beyond it, whole child tables
# are read (rows of adapters not asked for are never looked up): one bind parameter per id costs more than that.
IN_LIST_MAX = 2000

def _text(col: sa.Column) -> sa.ColumnElement:
    # JSON as text on both backends (psycopg would otherwise decode json itself, one call per value).
    return sa.cast(col, sa.Text)


def adapter_select() -> sa.Select:
    """Adapters with their task's name and their run; ``build_records`` unpacks the tuples in this order."""
    a, r = adapters.c, runs.c
    return sa.select(
        a.id, tasks.c.name, a.version, a.method, _text(a.config), a.status, a.created_at, a.description,
        _text(a.params_by_group), a.trainable_params, a.backbone_id, _text(a.summary),
        r.adapter_id, r.seed, r.data_fingerprint, _text(r.package_versions), r.command_line, r.duration_s, r.device,
    ).join_from(adapters, tasks, a.task_id == tasks.c.id).outerjoin(runs, r.adapter_id == a.id)  # fmt: skip


def utc(value: datetime | str) -> datetime:
    # SQLite hands back naive datetimes (as text when read raw); everything eptctl stores is UTC.
    if isinstance(value, str):
        return datetime.fromisoformat(value + "+00:00")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def task_record(row: Row) -> TaskRecord:
    return TaskRecord(
        name=row.name,
        description=row.description,
        labels=list(row.labels),
        metric=row.metric,
        source=dict(row.source),
        template=row.template,
        created_at=utc(row.created_at),
        task_type=row.task_type,
    )


def backbone_match(text: str) -> sa.ColumnElement:
    """Adapters on the backbone named ``text``, or whose embedding sha256 starts with it (8+ hex digits)."""
    match = backbones.c.name == text
    if len(text) >= 8 and all(c in "0123456789abcdef" for c in text.lower()):
        match = match | backbones.c.embedding_sha256.startswith(text.lower(), autoescape=True)
    return adapters.c.backbone_id.in_(sa.select(backbones.c.id).where(match))


def fetch(conn: Connection, stmt: sa.Executable) -> list[tuple]:
    """All rows as plain DBAPI tuples, without SQLAlchemy's per-row Row objects."""
    result = conn.execute(stmt)
    try:
        return result.cursor.fetchall()
    finally:
        result.close()


def _grouped(conn: Connection, ids: list[str] | None, query: sa.Select, key: sa.Column, make) -> dict[str, list]:
    """Items of a child table grouped by adapter id (column 0), for the adapters ``ids`` (None: all).

    ``make(*columns)`` turns the other columns into one item per row, column-wise (``map(cls, *columns)`` builds
    the objects from C, without a Python call per row).
    """
    rows = fetch(conn, query if ids is None else query.where(key.in_(ids)))
    if not rows:
        return {}
    owners, *columns = zip(*rows)
    out: dict[str, list] = {}
    for owner, item in zip(owners, make(*columns)):
        found = out.get(owner)
        if found is None:
            out[owner] = [item]
        else:
            found.append(item)
    return out


def build_records(conn: Connection, stmt: sa.Select, store_root: Path) -> list[AdapterRecord]:
    """AdapterRecords for ``stmt`` (``adapter_select()`` plus filters and order), children loaded in bulk."""
    # Building ~100,000 objects for 10,000 adapters triggers the cyclic GC over and over, scanning everything built
    # so far (a quarter of the time); none of them form cycles, so collection waits until the end.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_records(conn, stmt, store_root)
    finally:
        if enabled:
            gc.enable()


def _build_records(conn: Connection, stmt: sa.Select, store_root: Path) -> list[AdapterRecord]:
    rows = fetch(conn, stmt)
    if not rows:
        return []
    ids = [r[0] for r in rows] if len(rows) <= IN_LIST_MAX else None
    m, al, t, ar, ln, bb = metrics.c, aliases.c, tags.c, artifacts.c, lineage.c, backbones.c
    prefix = os.path.join(str(store_root), "")
    by_metric = _grouped(
        conn, ids, sa.select(m.adapter_id, m.split, m.name, m.value, m.step).order_by(m.id), m.adapter_id,
        lambda *cols: map(MetricValue, *cols),
    )  # fmt: skip
    # Ordered by (adapter, ...): the primary keys of tags and artifacts already are, so no sort is needed there.
    by_alias = _grouped(
        conn, ids, sa.select(al.adapter_id, al.name).order_by(al.adapter_id, al.name), al.adapter_id, lambda n: n
    )
    by_tag = _grouped(
        conn, ids, sa.select(t.adapter_id, t.tag).order_by(t.adapter_id, t.tag), t.adapter_id, lambda n: n
    )
    by_artifact = _grouped(
        conn, ids, sa.select(ar.adapter_id, ar.sha256, ar.size, ar.path, ar.kind).order_by(ar.adapter_id, ar.kind),
        ar.adapter_id, lambda sha, size, path, kind: map(ArtifactRecord, sha, size, [prefix + p for p in path], kind),
    )  # fmt: skip
    by_parent = _grouped(
        conn, ids, sa.select(ln.child_id, ln.parent_id, ln.weight, ln.how).order_by(ln.position), ln.child_id,
        lambda *cols: map(ParentLink, *cols),
    )  # fmt: skip
    backbone_rows = fetch(conn, sa.select(bb.id, bb.name, bb.revision, bb.embedding_sha256, bb.tokenizer_sha256,
                                          bb.width, bb.max_length))  # fmt: skip
    fps = {b[0]: BackboneFingerprint(*b[1:]) for b in backbone_rows}
    records = []
    for r in rows:
        (aid, task, version, method, config, status, created, description, params, trainable, backbone_id, summary,
         run_id, *run) = r
        records.append(
            stored_record(  # in AdapterRecord's field order; JSON fields stay text until read
                aid, task, version, f"{task}@{version}", method, config, status, utc(created), description, params,
                trainable, fps[backbone_id], by_metric.get(aid) or [], by_alias.get(aid) or [],
                by_tag.get(aid) or [], by_artifact.get(aid) or [], None if run_id is None else run,
                summary, by_parent.get(aid) or [],
            )
        )  # fmt: skip
    return records
