"""Bad registry states (#29: locked, read-only, full disk, secrets in URLs): one line on stderr, exit 2, and the
registry unchanged. Real processes hold real locks; real read-only and full filesystems where mount is allowed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from cli_support import ok, run
from cli_support import user_error as refused
from registry_fixtures import TASK, fresh_pg_database, new_adapter, require_postgres
from sqlalchemy.engine import make_url

from registry import Registry, RunInfo, TaskRecord


def dump(db_file) -> str:
    """The registry's content as SQL text (a file compare would see SQLite's WAL checkpoints, not changes); opened
    read-only, so it also reads a database on a read-only file system."""
    conn = sqlite3.connect(f"{db_file.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


@contextmanager
def tmpfs(path, size: str):
    """A real tmpfs of ``size`` mounted at ``path`` (unmounted after); skips the test where mount is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


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


# 3: secrets in recorded command lines ----------------------------------------------------------------------------
SECRET = "S3cr3tPassw0rd"
TINY = ["--model", "tiny-random-llama", "--steps", "2", "--batch-size", "8", "--max-train", "16", "--max-eval", "8",
        "--max-length", "48"]


def pg_dump(url: str) -> str:
    """Every row of every table of the PostgreSQL registry at ``url``, as text."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            return "\n".join(f"{t.name}: {row}" for t in meta.sorted_tables
                              for row in conn.execute(sa.select(t)).all())
    finally:
        engine.dispose()


def _no_secret_anywhere(ref: str, url: str, tmp_path) -> None:
    assert SECRET not in pg_dump(url)
    for extra in ([], ["--json"], ["--card"]):
        assert SECRET not in ok("show", ref, *extra, "--registry", url).stdout
    bundle = tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"
    ok("export", ref, bundle, "--registry", url)
    for f in bundle.rglob("*"):
        assert not f.is_file() or SECRET.encode() not in f.read_bytes(), f


def test_a_password_in_the_registry_url_reaches_no_row_output_or_bundle(eptctl_home, tmp_path, monkeypatch):
    require_postgres()
    with fresh_pg_database() as plain:
        url = make_url(plain).set(password=SECRET).render_as_string(hide_password=False)  # trust auth: any password
        args = ["train", "rt-polarity", *TINY, "--registry", url, "--json"]
        # what the command records is sys.argv (the test runs it in-process), here with a token flag as well
        monkeypatch.setattr(sys, "argv", ["eptctl", *args, "--token", SECRET])
        ref = json.loads(ok(*args).stdout)["ref"]
        shown = json.loads(ok("show", ref, "--json", "--registry", url).stdout)
        assert "--registry postgresql+psycopg://postgres:***@127.0.0.1" in shown["run"]["command_line"]
        assert "--token ***" in shown["run"]["command_line"]
        _no_secret_anywhere(ref, url, tmp_path)


def test_scrub_secrets_rewrites_rows_stored_with_a_secret(eptctl_home, tmp_path):
    require_postgres()
    with fresh_pg_database() as url:
        reg = Registry(url)
        reg.ensure_task(TaskRecord(TASK, "polarity", ["rotten", "fresh"]))
        rec = reg.register(new_adapter(seed=1, run=RunInfo(1, None, {}, "eptctl train x", 1.0, "cpu")))
        reg.close()
        import sqlalchemy as sa

        engine = sa.create_engine(url, poolclass=sa.NullPool)
        with engine.begin() as conn:  # a row from before masking: written behind the registry's back
            conn.execute(sa.text("UPDATE runs SET command_line = :c"),
                         {"c": f"eptctl train x --registry postgresql://me:{SECRET}@db/x --hf-token={SECRET}"})
        engine.dispose()
        assert SECRET in pg_dump(url)
        for extra in ([], ["--json"], ["--card"]):  # masked on the way out already
            assert SECRET not in ok("show", rec.ref, *extra, "--registry", url).stdout
        before = pg_dump(url)
        listed = ok("db", "scrub-secrets", "--dry-run", "--registry", url).stdout
        assert rec.ref in listed and "would mask the secrets in 1 stored command line(s)" in listed
        assert pg_dump(url) == before
        assert "masked the secrets in 1 stored" in ok("db", "scrub-secrets", "--registry", url).stdout
        assert SECRET not in pg_dump(url)
        assert "--registry postgresql://me:***@db/x --hf-token=***" in pg_dump(url)
        assert json.loads(ok("db", "scrub-secrets", "--json", "--registry", url).stdout)["adapters"] == []
        _no_secret_anywhere(rec.ref, url, tmp_path)


def test_mask_secrets_keeps_everything_but_the_secret():
    from eptctl.core.secrets import mask_secrets

    assert mask_secrets("eptctl list --sort accuracy") == "eptctl list --sort accuracy"
    assert mask_secrets(f"eptctl x --registry=sqlite:///a.db --api-key {SECRET} EPTCTL_SERVE_TOKEN={SECRET}") == (
        "eptctl x --registry=sqlite:///a.db --api-key *** EPTCTL_SERVE_TOKEN=***")
    assert mask_secrets(f"eptctl x --registry 'postgresql://h/db?password={SECRET}&sslmode=require'") == (
        "eptctl x --registry 'postgresql://h/db?password=***&sslmode=require'")
    assert SECRET not in mask_secrets(f"eptctl 'unbalanced --token {SECRET}")


# 11: a read-only registry ---------------------------------------------------------------------------------------
def test_a_read_only_home_reads_and_refuses_writes_before_any_work(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "ro", "4m") as mount:
        home = mount / "home"
        monkeypatch.setenv("EPTCTL_HOME", str(home))
        reg = Registry()
        reg.ensure_task(TaskRecord(TASK, "polarity", ["rotten", "fresh"]))
        ref = reg.register(new_adapter(seed=1)).ref
        reg.close()
        remount_read_only(mount)
        before = dump(home / "registry.db")
        assert ref in ok("list").stdout and ref in ok("show", ref).stdout  # reads work
        assert json.loads(ok("show", ref, "--json").stdout)["ref"] == ref
        for write in (["tag", ref, "prod"], ["alias", ref, "prod"], ["archive", ref], ["rm", ref], ["eval", ref]):
            refused(run(*write), "is read-only", "read-only file system")
        started = time.monotonic()
        refused(run("train", "rt-polarity", *TINY), "is read-only", "read-only file system", notes=True)
        assert time.monotonic() - started < 20  # refused before loading data or model, not after training
        assert dump(home / "registry.db") == before
        monkeypatch.setenv("EPTCTL_HOME", str(mount / "missing"))
        refused(run("list"), "cannot create the eptctl home", "Read-only file system")


# 13: a full disk at the end of training -------------------------------------------------------------------------
def _fill(folder) -> None:
    """Fill the file system of ``folder`` to the last byte (a real ENOSPC for the next write)."""
    with open(folder / "filler", "wb", buffering=0) as f:  # unbuffered: no write left over for close()
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"x" * size)
            except OSError:
                continue


def test_a_full_artifact_root_keeps_the_trained_weights_for_resume(eptctl_home, tmp_path, monkeypatch):
    from eptctl.workflows.tasks import resolve_spec, spec_to_task_record

    with tmpfs(tmp_path / "full", "64k") as root:
        monkeypatch.setenv("EPTCTL_ARTIFACTS", str(root))
        reg = Registry()  # the task is known already: the failed run must change nothing at all
        reg.ensure_task(spec_to_task_record(resolve_spec("rt-polarity", reg, None)))
        reg.close()
        _fill(root)
        before = dump(eptctl_home / "registry.db")
        args = ["train", "rt-polarity", *TINY]
        monkeypatch.setattr(sys, "argv", ["eptctl", *args])  # the command the hint repeats
        line = refused(run(*args), "No space left on device", str(root), "bytes needed", notes=True)
        assert f"run `eptctl {' '.join(args)} --resume`" in line and "without training again" in line
        assert dump(eptctl_home / "registry.db") == before
        (root / "filler").unlink()  # the user frees space, then resumes: registered, no step trained again
        resumed = ok(*args, "--resume")
        assert "resumed at step 2 of 2" in resumed.stderr  # nothing trained again
        assert [a["ref"] for a in json.loads(ok("list", "--json").stdout)] == ["rt-polarity@1"]
        assert not list((eptctl_home / "runs").glob("*.safetensors"))  # the checkpoint went into the registry
