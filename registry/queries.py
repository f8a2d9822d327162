"""Rows to records in bulk, and the SQL expressions that rank adapters by a metric.

Reading N adapters costs a fixed number of queries (the adapters, then one per child table), never one per
adapter. Listing 10,000 adapters is dominated by building Python objects, so rows are fetched as plain DBAPI tuples
(every column read here needs no type conversion beyond the two handled below) and JSON is decoded in batches.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
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
    RunInfo,
    TaskRecord,
)
from registry.schema import adapters, aliases, artifacts, backbones, lineage, metrics, runs, tags, tasks

CHUNK = 5000  # ids per IN (...) list: under SQLite's 32,766 and PostgreSQL's 65,535 bind parameters
DEFAULT_SPLITS = ("validation", "test")

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
        value = datetime.fromisoformat(value)
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
    )


def parse_metric_key(key: str) -> tuple[str | None, str]:
    """``"accuracy"`` (validation, else test) or ``"test:accuracy"`` (that split only) -> (split, name)."""
    split, sep, name = key.partition(":")
    return (split, name) if sep else (None, key)


def metric_value(key: str) -> sa.ColumnElement:
    """A correlated scalar: the adapter's final value of a metric (NULL if it has none).

    Final value: the row without a step, else the highest step; the split is the one named in ``key``, else
    "validation", falling back to "test". One index seek per adapter (ix_metrics_adapter_id_name_split_step).
    """
    split, name = parse_metric_key(key)
    values = []
    for s in (split,) if split else DEFAULT_SPLITS:
        m = metrics.alias()
        values.append(
            sa.select(m.c.value)
            .where(m.c.adapter_id == adapters.c.id, m.c.name == name, m.c.split == s)
            .order_by(m.c.step.desc().nulls_first(), m.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
    return values[0] if len(values) == 1 else sa.func.coalesce(*values)


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


def _loads_many(texts: list[str | None]) -> list:
    """Decode many JSON documents with one ``json.loads`` call: about twice as fast as one call each."""
    present = [t for t in texts if t is not None]
    decoded = iter(json.loads("[" + ",".join(present) + "]")) if present else iter(())
    return [next(decoded) if t is not None else None for t in texts]


def _grouped(conn: Connection, ids: Sequence[str] | sa.Select, query: sa.Select, key: sa.Column) -> dict[str, list]:
    """Rows of a child table grouped by adapter id (column 0); ``ids``: a list, or a SELECT of ids (no binds)."""
    out: dict[str, list] = defaultdict(list)
    chunks = [ids] if isinstance(ids, sa.Select) else [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]
    for chunk in chunks:
        for row in fetch(conn, query.where(key.in_(chunk))):
            out[row[0]].append(row)
    return out


def build_records(
    conn: Connection, stmt: sa.Select, store_root: Path, ids_query: sa.Select | None = None
) -> list[AdapterRecord]:
    """AdapterRecords for ``stmt`` (``adapter_select()`` plus filters and order), children loaded in bulk.

    ``ids_query``: a SELECT of the same adapters' ids; children are then selected with ``IN (subquery)`` instead
    of one bind parameter per id, which is what keeps a full listing cheap.
    """
    rows = fetch(conn, stmt)
    if not rows:
        return []
    ids = ids_query if ids_query is not None else [r[0] for r in rows]
    m, al, t, ar, ln = metrics.c, aliases.c, tags.c, artifacts.c, lineage.c
    by_metric = _grouped(
        conn, ids, sa.select(m.adapter_id, m.split, m.name, m.value, m.step).order_by(m.id), m.adapter_id
    )
    by_alias = _grouped(conn, ids, sa.select(al.adapter_id, al.name).order_by(al.name), al.adapter_id)
    by_tag = _grouped(conn, ids, sa.select(t.adapter_id, t.tag).order_by(t.tag), t.adapter_id)
    by_artifact = _grouped(
        conn, ids, sa.select(ar.adapter_id, ar.sha256, ar.size, ar.path, ar.kind).order_by(ar.kind), ar.adapter_id
    )
    by_parent = _grouped(
        conn, ids, sa.select(ln.child_id, ln.parent_id, ln.weight, ln.how).order_by(ln.position), ln.child_id
    )
    fps = {
        b[0]: BackboneFingerprint(*b[1:])
        for b in fetch(conn, sa.select(backbones.c.id, backbones.c.name, backbones.c.revision,
                                       backbones.c.embedding_sha256, backbones.c.tokenizer_sha256,
                                       backbones.c.width, backbones.c.max_length))
    }  # fmt: skip
    configs, params, summaries, packages = (_loads_many([r[i] for r in rows]) for i in (4, 8, 11, 15))
    prefix = os.path.join(str(store_root), "")
    empty: list = []
    records = []
    for i, r in enumerate(rows):
        aid, task, version, method, _, status, created, description, _, trainable, backbone_id, _, *run = r
        records.append(
            AdapterRecord(
                id=aid,
                task=task,
                version=version,
                ref=f"{task}@{version}",
                method=method,
                config=configs[i],
                status=status,
                created_at=utc(created),
                description=description,
                params_by_group=params[i],
                trainable_params=trainable,
                backbone=fps[backbone_id],
                metrics=[MetricValue(x[1], x[2], x[3], x[4]) for x in by_metric.get(aid, empty)],
                aliases=[x[1] for x in by_alias.get(aid, empty)],
                tags=[x[1] for x in by_tag.get(aid, empty)],
                artifacts=[ArtifactRecord(x[1], x[2], prefix + x[3], x[4]) for x in by_artifact.get(aid, empty)],
                run=None if run[0] is None else RunInfo(run[1], run[2], packages[i], run[4], run[5], run[6]),
                summary=summaries[i],
                parents=[ParentLink(x[1], x[2], x[3]) for x in by_parent.get(aid, empty)],
            )
        )
    return records
