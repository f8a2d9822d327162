"""Bad registry states (#29: locked, read-only, full disk, secrets in URLs): one line on stderr, exit 2, and the
registry unchanged. Real processes hold real locks; real read-only and full filesystems where mount is allowed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest
from cli_support import ok, run
from cli_support import user_error as refused
from registry_fixtures import TASK, new_adapter

from registry import Registry, TaskRecord


def dump(db_file) -> str:
    """The registry's content as SQL text (a file compare would see SQLite's WAL checkpoints, not changes)."""
    with sqlite3.connect(db_file) as conn:
        return "\n".join(conn.iterdump())


@pytest.fixture
def stored(eptctl_home):
    """A home whose SQLite registry holds one adapter; returns its reference."""
    reg = Registry()
    reg.ensure_task(TaskRecord(TASK, "polarity", ["rotten", "fresh"]))
    ref = reg.register(new_adapter(seed=1)).ref
    reg.close()
    return ref


# 12: a locked database ------------------------------------------------------------------------------------------
_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()  # hold the write lock until the test closes our stdin
conn.rollback()
"""


def test_a_write_lock_held_by_another_process_ends_in_one_line(stored, eptctl_home, monkeypatch):
    monkeypatch.setenv("EPTCTL_REGISTRY_TIMEOUT", "1.5")
    db_file = eptctl_home / "registry.db"
    before = dump(db_file)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(db_file)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        refused(run("tag", stored, "prod"), "another process holds the registry", "EPTCTL_REGISTRY_TIMEOUT")
        assert time.monotonic() - started < 10
        assert stored in ok("list").stdout  # reads go on beside the writer (WAL)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert dump(db_file) == before
    ok("tag", stored, "prod")  # the lock is gone: the same write succeeds


def test_a_bad_registry_timeout_is_refused(stored, monkeypatch):
    monkeypatch.setenv("EPTCTL_REGISTRY_TIMEOUT", "soon")
    refused(run("list"), "EPTCTL_REGISTRY_TIMEOUT")
