"""The registry under concurrent writers and crashes, on a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from registry_fixtures import TASK, db_url, new_adapter, pg_url, reg, sqlite_url  # noqa: F401

from registry import CRASH_ENV, MetricValue, Registry, TaskRecord
from registry.db import create_engine

PROCESSES, PER_PROCESS = 8, 25


def _register_many(url: str, home: str, worker: int, barrier, errors) -> None:
    """One writer process: open a brand-new database, create the task, register PER_PROCESS adapters."""
    os.environ["EPTCTL_HOME"] = home
    try:
        barrier.wait(timeout=120)  # everyone has imported torch: now all open, create and write at once
        reg = Registry(url)
        reg.ensure_task(TaskRecord(TASK, "Movie review polarity", ["negative", "positive"]))
        for i in range(PER_PROCESS):
            seed = worker * 1000 + i
            reg.register(new_adapter(seed=seed, metrics=[MetricValue("validation", "accuracy", seed / 10_000)]))
        reg.close()
    except BaseException as exc:  # report it to the parent, which fails the test with it
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


def test_concurrent_writers_get_gapless_versions(db_url, eptctl_home):
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_register_many, args=(db_url, str(eptctl_home), w, barrier, errors))
        for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    reported = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert reported == [] and [p.exitcode for p in procs] == [0] * PROCESSES, reported

    reg = Registry(db_url)
    records = reg.list_adapters(task=TASK)
    total = PROCESSES * PER_PROCESS
    assert sorted(r.version for r in records) == list(range(1, total + 1))
    assert len({r.id for r in records}) == total
    assert len({r.artifacts[0].sha256 for r in records}) == total
    assert all(Path(r.artifacts[0].path).exists() for r in records)
    assert reg.gc(grace_seconds=0) == []  # every file written is referenced
    reg.close()


_CRASHING_REGISTER = """
import os, sys
from registry import Registry
from registry_fixtures import new_adapter
os.environ[{env!r}] = sys.argv[1]
Registry({url!r}).register(new_adapter(seed=int(sys.argv[2])))
raise SystemExit("the crash hook did not fire")
"""


def test_sigkill_between_artifact_and_commit_leaves_only_an_orphan_file(reg, db_url):
    kept = reg.register(new_adapter(seed=1))
    code = _CRASHING_REGISTER.format(env=CRASH_ENV, url=db_url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    # Killed before the transaction, and killed inside it (rows inserted, not committed): both at once.
    crashes = [
        subprocess.Popen([sys.executable, "-c", code, point, str(seed)], env=env, stderr=subprocess.PIPE, text=True)
        for point, seed in (("1", 2), ("in-transaction", 3))
    ]
    for proc in crashes:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, err

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
