"""The registry under concurrent writers and crashes, on a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from contextlib import ExitStack
from functools import cache
from pathlib import Path

import pytest
import sqlalchemy as sa
from registry_fixtures import (  # noqa: F401
    TASK,
    db_url,
    fresh_pg_database,
    new_adapter,
    pg_unreachable,
    pg_url,
    reg,
    require_postgres,
    sqlite_url,
)

from registry import MetricValue, Registry, TaskRecord, sql_insert
from registry.sql_store import SqlAlchemyStore
from registry.db import create_engine

PROCESSES, PER_PROCESS = 8, 25


def _register_many(urls: dict[str, str], home: str, worker: int, barrier, errors) -> None:
    """One writer process. For each backend in turn, all processes at once: open the brand-new database (creating
    the schema), create the task, register PER_PROCESS adapters. Errors go to the parent, which fails with them."""
    os.environ["EPTCTL_HOME"] = home
    for backend, url in urls.items():
        try:
            barrier.wait(timeout=120)  # everyone has imported torch (and finished the previous backend)
            reg = Registry(url)
            reg.ensure_task(TaskRecord(TASK, "Movie review polarity", ["negative", "positive"]))
            for i in range(PER_PROCESS):
                seed = worker * 1000 + i
                reg.register(new_adapter(seed=seed, metrics=[MetricValue("validation", "accuracy", seed / 10_000)]))
            reg.close()
        except BaseException as exc:
            errors.put((backend, f"worker {worker}: {type(exc).__name__}: {exc}"))


@pytest.fixture(scope="module")
def concurrent_writes(tmp_path_factory):
    """8 spawned processes write to a SQLite file and (if reachable) a fresh PostgreSQL database.

    One set of processes serves both backends: each one imports torch once (seconds on a 2-core machine).
    """
    home = tmp_path_factory.mktemp("concurrent")
    urls = {"sqlite": f"sqlite:///{home / 'registry.db'}"}
    with ExitStack() as stack:
        if pg_unreachable() is None:
            urls["postgres"] = stack.enter_context(fresh_pg_database())
        ctx = mp.get_context("spawn")
        barrier, errors = ctx.Barrier(PROCESSES), ctx.Queue()
        args = [(urls, str(home / "home"), w, barrier, errors) for w in range(PROCESSES)]
        procs = [ctx.Process(target=_register_many, args=a) for a in args]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        assert [p.exitcode for p in procs] == [0] * PROCESSES
        reported = []
        while not errors.empty():
            reported.append(errors.get())
        results = {backend: (url, [msg for b, msg in reported if b == backend]) for backend, url in urls.items()}
        yield home / "home", results


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_writers_get_gapless_versions(concurrent_writes, backend, monkeypatch):
    if backend == "postgres":
        require_postgres()
    home, results = concurrent_writes
    url, errors = results[backend]
    assert errors == []  # no error surfaced to any caller
    monkeypatch.setenv("EPTCTL_HOME", str(home))  # where the writers put the artifact files
    reg = Registry(url)
    records = reg.list_adapters(task=TASK)
    total = PROCESSES * PER_PROCESS
    assert sorted(r.version for r in records) == list(range(1, total + 1))
    assert len({r.id for r in records}) == total
    assert len({r.artifacts[0].sha256 for r in records}) == total
    assert all(Path(r.artifacts[0].path).exists() for r in records)
    reg.close()


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all: no finally, no rollback, no atexit


def _register_and_crash(url: str, home: str, point: str, seed: int) -> None:
    """Register in this (forked, throw-away) process and die by SIGKILL at ``point``: "1" once the artifact files
    are on disk, before the transaction starts; "in-transaction" after the rows are inserted, before the commit."""
    os.environ["EPTCTL_HOME"] = home
    if point == "1":
        SqlAlchemyStore.insert_adapter = lambda *args, **kw: _sigkill()
    else:
        insert_rows = sql_insert.insert_adapter_rows

        def insert_then_die(*args, **kw):
            insert_rows(*args, **kw)
            _sigkill()

        sql_insert.insert_adapter_rows = insert_then_die
    Registry(url).register(new_adapter(seed=seed))
    raise SystemExit("the crash hook did not fire")


@cache
def _forkserver():
    """Crashing writers are forked from one server that imported torch once (seconds per process otherwise)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "registry", "registry_fixtures"])
    return ctx


def test_sigkill_between_artifact_and_commit_leaves_only_an_orphan_file(reg, db_url):
    kept = reg.register(new_adapter(seed=1))
    # Killed before the transaction, and killed inside it (rows inserted, not committed): both at once.
    ctx = _forkserver()
    crashes = [
        ctx.Process(target=_register_and_crash, args=(db_url, os.environ["EPTCTL_HOME"], point, seed))
        for point, seed in (("1", 2), ("in-transaction", 3))
    ]
    for proc in crashes:
        proc.start()
    for proc in crashes:
        proc.join(timeout=120)
        assert proc.exitcode == -signal.SIGKILL

    assert [r.id for r in reg.list_adapters(include_archived=True)] == [kept.id]  # the half-registered are invisible
    files = sorted(p for _, p in reg.store.files())
    orphans = [p for p in files if p != Path(kept.artifacts[0].path)]
    assert len(files) == 3 and len(orphans) == 2
    assert reg.gc() == []  # younger than the grace period: could be a register still in flight
    assert sorted(reg.gc(grace_seconds=0)) == orphans and not any(p.exists() for p in orphans)
    assert reg.load_servable(kept.ref)[0]["prompt"].shape == (4, 16)
    assert reg.register(new_adapter(seed=4)).version == 2  # the killed writers took no version: no gap
    if db_url.startswith("sqlite"):
        engine = create_engine(db_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
            assert conn.execute(sa.text("PRAGMA foreign_key_check")).all() == []
        engine.dispose()
