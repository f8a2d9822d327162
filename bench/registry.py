"""Registry speed on SQLite and PostgreSQL: register latency, resolve latency, listing 10,000 adapters.

    python -m bench registry            # 10,000 adapters, 50 registrations per backend
    python -m bench registry --quick    # 1,000 adapters, 20 registrations

PostgreSQL: ``$EPTCTL_TEST_POSTGRES_URL`` (default postgres@127.0.0.1:5432); a scratch database is created through
the ``postgres`` maintenance database and dropped afterwards. Everything else lives in a temporary EPTCTL_HOME.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("EPTCTL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TASKS = 10
CONFIG = {  # about the size of a real EPT config
    "schema_version": 1,
    "prompt_length": 60,
    "rank": 8,
    "spaces": 4,
    "fusion": "attention",
    "lr_prompt": 0.3,
    "lr_lowrank": 1e-4,
    "weight_decay": 1e-5,
    "max_length": 256,
    "epochs": 10,
    "batch_size": 16,
    "seed": 0,
    "eptctl_version": "0.1.0",
}
PARAMS = {"prompt": 46080, "lora_a": 2048, "lora_b": 6144}


def seed_adapters(reg, n: int, tasks: int = TASKS) -> None:
    """Add ``n`` adapters, each with 3 metrics, an alias, a tag and a run, spread over ``tasks`` tasks.

    The first goes through ``register``; the rest are bulk-inserted rows that share its backbone and its artifact
    file, on purpose: this measures reading, not n fsyncs. Adapter i belongs to task ``bench-{i % tasks}``.
    """
    import torch

    from registry import BackboneFingerprint, NewAdapter, TaskRecord
    from registry.schema import adapters, aliases, artifacts, metrics, runs, tags
    from registry.schema import tasks as tasks_table

    for k in range(tasks):
        reg.ensure_task(TaskRecord(f"bench-{k}", "seeded", ["a", "b"]))
    fp = BackboneFingerprint("HuggingFaceTB/SmolLM2-135M-Instruct", "main", "e" * 64, "f" * 64, 576, 256)
    first = reg.register(NewAdapter("bench-0", "ept", CONFIG, PARAMS, fp, {"prompt": torch.zeros(4, 16)}))
    art = first.artifacts[0]
    rows, metric_rows, alias_rows, tag_rows, art_rows, run_rows = [], [], [], [], [], []
    with reg._db.engine.begin() as conn:  # bench-only shortcut past the API: bulk rows in one transaction
        task_ids = dict(conn.execute(sa.select(tasks_table.c.name, tasks_table.c.id)).all())
        backbone_id = conn.execute(sa.select(adapters.c.backbone_id).where(adapters.c.id == first.id)).scalar_one()
        start = datetime.now(timezone.utc) - timedelta(seconds=n)
        for i in range(n):
            aid, task_id = (first.id if i == 0 else uuid.uuid4().hex), task_ids[f"bench-{i % tasks}"]
            if i:
                rows.append(dict(
                    id=aid, task_id=task_id, version=i // tasks + 1, method=("ept", "pt", "dept")[i % 3],
                    config={**CONFIG, "seed": i}, status="ready", created_at=start + timedelta(seconds=i),
                    description="", params_by_group=PARAMS, trainable_params=sum(PARAMS.values()),
                    backbone_id=backbone_id, summary={"space_weights": [0.25, 0.25, 0.25, 0.25]},
                ))  # fmt: skip
                art_rows.append(dict(adapter_id=aid, kind="servable", sha256=art.sha256, size=art.size,
                                     path=os.path.relpath(art.path, reg.store.root)))  # fmt: skip
            metric_rows += [
                dict(adapter_id=aid, split=split, name=name, value=value, step=None, final=True)
                for split, name, value in [
                    ("validation", "accuracy", (i * 7919 % 1000) / 1000),
                    ("test", "accuracy", (i * 104729 % 1000) / 1000),
                    ("validation", "loss", 1.0 / (i + 1)),
                ]
            ]
            alias_rows.append(dict(task_id=task_id, name=f"run-{i}", adapter_id=aid))
            tag_rows.append(dict(adapter_id=aid, tag=f"group-{i % 5}"))
            run_rows.append(dict(adapter_id=aid, seed=i, data_fingerprint="d" * 64, package_versions={"torch": "2.13"},
                                 command_line="eptctl train", duration_s=60.0, device="cpu"))  # fmt: skip
        for table, values in [(adapters, rows), (metrics, metric_rows), (aliases, alias_rows), (tags, tag_rows),
                              (artifacts, art_rows), (runs, run_rows)]:  # fmt: skip
            if values:
                conn.execute(table.insert(), values)
        for tid in task_ids.values():
            top = conn.execute(sa.select(sa.func.max(adapters.c.version)).where(adapters.c.task_id == tid)).scalar()
            conn.execute(tasks_table.update().where(tasks_table.c.id == tid).values(last_version=top or 0))
    if reg._db.engine.dialect.name == "postgresql":  # what autovacuum would have done by the time anyone lists
        with reg._db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")


def _timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t0)
        del result  # freeing what was built is the caller's time, not the call's
    return out


@contextmanager
def _postgres() -> Iterator[str | None]:
    admin = sa.create_engine(
        make_url(PG_URL).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    name = f"eptctl_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError:
        yield None
        return
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _measure(backend: str, url: str, n_list: int, n_register: int) -> list[dict]:
    import torch

    from registry import BackboneFingerprint, NewAdapter, Registry, TaskRecord

    reg = Registry(url)
    try:
        reg.ensure_task(TaskRecord("bench-register", "", ["a", "b"]))
        fp = BackboneFingerprint("tiny", None, "e" * 64, "f" * 64, 16, 128)
        counter = iter(range(10**9))

        def register():
            i = next(counter)
            reg.register(
                NewAdapter("bench-register", "ept", {"i": i}, {"prompt": 64}, fp, {"prompt": torch.full((4, 16), i)})
            )

        reg_times = _timed(register, n_register)
        seed_adapters(reg, n_list)
        some = reg.list_adapters(limit=50)
        refs = iter([r.ref for r in some] * 10)
        prefixes = iter([r.id[:8] for r in some] * 10)
        resolve_version = _timed(lambda: reg.resolve(next(refs)), 50)
        resolve_prefix = _timed(lambda: reg.resolve(next(prefixes)), 50)
        resolve_best = _timed(lambda: reg.resolve("bench-3@best"), 20)
        list_all = _timed(lambda: reg.list_adapters(), 3)
        total = len(reg.list_adapters())
        list_top = _timed(lambda: reg.list_adapters(sort="accuracy", min_metric={"accuracy": 0.5}, limit=20), 5)
    finally:
        reg.close()

    def row(what, times, n=""):
        return {"backend": backend, "operation": what, "n": n, "median_ms": round(1000 * statistics.median(times), 2),
                "min_ms": round(1000 * min(times), 2)}  # fmt: skip

    return [
        row("register (tiny tensors, fsync'd file + one transaction)", reg_times, n_register),
        row("resolve TASK@VERSION", resolve_version, 50),
        row("resolve id prefix", resolve_prefix, 50),
        row(f"resolve TASK@best (over {n_list // TASKS} adapters)", resolve_best, 20),
        row(f"list all {total} adapters with metrics, aliases, tags", list_all, 3),
        row(f"list top 20 by accuracy >= 0.5 (of {total})", list_top, 5),
    ]


def run(quick: bool = False) -> list[dict]:
    n_list, n_register = (1_000, 20) if quick else (10_000, 50)
    rows = []
    with tempfile.TemporaryDirectory(prefix="eptctl-bench-") as home:
        os.environ["EPTCTL_HOME"] = home  # never the user's ~/.eptctl
        rows += _measure("sqlite", f"sqlite:///{home}/registry.db", n_list, n_register)
        with _postgres() as pg:
            if pg is None:
                rows.append({"backend": "postgres", "operation": "unreachable: skipped", "n": "", "median_ms": "",
                             "min_ms": ""})  # fmt: skip
            else:
                rows += _measure("postgres", pg, n_list, n_register)
    return rows
