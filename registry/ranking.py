"""Metric values: which one is an adapter's final value, and ranking adapters by it in SQL.

Every (adapter, split, name) has exactly one row flagged ``final``: the one without a step, else the one with the
highest step. The flag is maintained here, on write, so that ranking is a plain LEFT JOIN on both backends (a
per-adapter "latest step" subquery costs PostgreSQL seconds for 10,000 adapters).
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from registry.records import DEFAULT_SPLITS, MetricValue, final_order
from registry.schema import adapters, metrics


def parse_metric_key(key: str) -> tuple[str | None, str]:
    """``"accuracy"`` (validation, else test) or ``"test:accuracy"`` (that split only) -> (split, name)."""
    split, sep, name = key.partition(":")
    return (split, name) if sep else (None, key)


def write_metrics(conn: Connection, adapter_id: str, values: list[MetricValue], new_adapter: bool = False) -> None:
    """Store metric values; one for an existing (split, name, step) replaces it. Keeps the ``final`` flags."""
    m = metrics.c
    latest = {(v.split, v.name, v.step): v for v in values}  # within one call, the last value of a key wins
    candidates: dict[tuple[str, str], list] = defaultdict(list)  # (split, name) -> [(final_order, origin)]
    old_ids = []
    if not new_adapter:
        stored = conn.execute(sa.select(m.id, m.split, m.name, m.step).where(m.adapter_id == adapter_id)).all()
        replaced = [r.id for r in stored if (r.split, r.name, r.step) in latest]
        if replaced:
            conn.execute(metrics.delete().where(m.id.in_(replaced)))
        for r in stored:
            if r.id not in replaced and any(k[:2] == (r.split, r.name) for k in latest):
                candidates[(r.split, r.name)].append((final_order(r.step), ("old", r.id)))
                old_ids.append(r.id)
    for split, name, step in latest:
        candidates[(split, name)].append((final_order(step), ("new", step)))
    winner = {key: max(found)[1] for key, found in candidates.items()}  # final_order values are distinct per key
    if old_ids:  # the stored rows of the keys written get their flag recomputed
        conn.execute(metrics.update().where(m.id.in_(old_ids)).values(final=False))
        old_winners = [origin[1] for origin in winner.values() if origin[0] == "old"]
        if old_winners:
            conn.execute(metrics.update().where(m.id.in_(old_winners)).values(final=True))
    if latest:
        rows = [
            {"adapter_id": adapter_id, "split": v.split, "name": v.name, "value": v.value, "step": v.step,
             "final": winner[(v.split, v.name)] == ("new", v.step)}
            for v in latest.values()
        ]  # fmt: skip
        conn.execute(metrics.insert(), rows)


def ranked_value(select: sa.Select, key: str) -> tuple[sa.Select, sa.ColumnElement]:
    """``select`` LEFT JOINed to each adapter's final value of metric ``key``, and that value's expression.

    ``key``: a metric name (the "validation" value, else the "test" one) or ``SPLIT:NAME``.
    """
    split, name = parse_metric_key(key)
    values = []
    for s in (split,) if split else DEFAULT_SPLITS:
        m = metrics.alias()
        on = sa.and_(m.c.adapter_id == adapters.c.id, m.c.name == name, m.c.split == s, m.c.final.is_(True))
        select = select.outerjoin(m, on)
        values.append(m.c.value)
    return select, values[0] if len(values) == 1 else sa.func.coalesce(*values)
