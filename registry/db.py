"""Database URLs, engines and write transactions that survive concurrent writers on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from eptctl.core import secrets
from eptctl.core.errors import EptctlError
from eptctl.core.files import on_read_only_fs, read_only_reason
from eptctl.core.home import eptctl_home

URL_ENV = "EPTCTL_REGISTRY_URL"
TIMEOUT_ENV = "EPTCTL_REGISTRY_TIMEOUT"
BUSY_TIMEOUT_MS = 30_000  # the longest one SQLite statement waits for a lock; the retries below go on past it
PG_CONNECT_TIMEOUT_S = 10
WRITE_RETRY_SECONDS = 60.0  # default: give up on a write that kept meeting locks for this long

T = TypeVar("T")


class RegistryError(EptctlError):
    """A registry error a user can cause or fix: one-line message plus a hint."""


class ArtifactWriteError(RegistryError):
    """An artifact file could not be written (a full disk, a read-only root): ``path`` it was to be written to,
    ``needed`` bytes it needed, ``free`` bytes free there (None if unknown). No row was written."""

    def __init__(self, path, needed: int, err: OSError):
        try:  # a local path only (an object store has no free space to report)
            self.free: int | None = shutil.disk_usage(_existing(path)).free if isinstance(path, Path) else None
        except OSError:
            self.free = None
        self.path, self.needed = path, needed
        free = "" if self.free is None else f", {self.free:,} free"
        super().__init__(f"cannot write the artifact file {path}: {err.strerror or err} "
                         f"({needed:,} bytes needed{free})",
                         hint="free space there, or point $EPTCTL_ARTIFACTS at a folder with room; nothing was stored")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def default_url() -> str:
    return f"sqlite:///{eptctl_home() / 'registry.db'}"


def resolve_url(url: str | None) -> str:
    """The explicit URL, else ``$EPTCTL_REGISTRY_URL``, else the SQLite file in ``$EPTCTL_HOME``."""
    return url or os.environ.get(URL_ENV) or default_url()


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: the only form of a URL eptctl ever prints."""
    return secrets.mask_url(url)


def lock_timeout() -> float:
    """Seconds a write waits for another process's lock before giving up: ``$EPTCTL_REGISTRY_TIMEOUT``, else 60.

    Raises ``RegistryError`` if the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return WRITE_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:  # also refuses nan
        raise RegistryError(f"${TIMEOUT_ENV} must be a number of seconds in (0, 86400], got {raw!r}",
                            hint=f"e.g. export {TIMEOUT_ENV}=60, or unset it")
    return value


def locked(display_url: str, timeout: float) -> RegistryError:
    """The error of a write that waited ``timeout`` seconds for a lock another process holds."""
    return RegistryError(
        f"another process holds the registry {display_url} (a write lock, held for more than {timeout:g} s)",
        hint=f"wait for the other eptctl command (train, import, db upgrade...) to finish and run this again, or "
             f"wait longer: ${TIMEOUT_ENV}=SECONDS (now {timeout:g})")


def upgrade_hint(url: str | None) -> str:
    """The exact command that upgrades this database (password masked)."""
    explicit = url or os.environ.get(URL_ENV)
    return "eptctl db upgrade" if not explicit else f"eptctl db upgrade --registry {mask_url(explicit)}"


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None: another backend, memory, or a ``file:`` URI)."""
    parsed = make_url(url)
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).expanduser()


def sqlite_read_only(url: str) -> str | None:
    """Why the SQLite database at ``url`` cannot be written (its file, or its folder, where SQLite keeps the WAL
    and lock files), or None: writable, or not a SQLite file."""
    path = sqlite_file(url)
    if path is None:
        return None
    return read_only_reason(path) or read_only_reason(path.parent)


def read_only_error(display_url: str, reason: str) -> RegistryError:
    """The error of a write to a registry that cannot be written, raised before any work starts."""
    return RegistryError(
        f"the registry {display_url} is read-only: {reason}",
        hint="reads work (list, show, compare, predict, eval --no-store); to change it, make it writable, or copy "
             "the database file somewhere writable and pass --registry sqlite:///COPY.db")


def create_engine(url: str, timeout: float = WRITE_RETRY_SECONDS, read_only: bool = False) -> Engine:
    """A SQLAlchemy engine for ``url``; on SQLite one statement waits at most ``timeout`` s (and 30 s) for a lock,
    and ``read_only`` opens the file read-only (a WAL database in a read-only folder cannot be opened otherwise)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        busy_ms = int(min(timeout * 1000, BUSY_TIMEOUT_MS))
        path = sqlite_file(url)
        if read_only and path is not None:
            # immutable: no lock or WAL files needed; safe only where nobody can write (a read-only file system)
            uri = path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if on_read_only_fs(path) else "")
            engine = sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(
                uri, uri=True, timeout=busy_ms / 1000, check_same_thread=False))
        else:
            engine = sa.create_engine(parsed, connect_args={"timeout": busy_ms / 1000})
        _sqlite_events(engine, busy_ms, wal=not read_only)
        return engine
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S  # an unreachable host fails, it does not hang
    return sa.create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_events(engine: Engine, busy_ms: int, wal: bool = True) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # We emit BEGIN ourselves (below): pysqlite's implicit BEGIN is DEFERRED, and a deferred transaction that
        # later writes fails at once with "database is locked" instead of waiting for busy_timeout.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")  # first: the next pragma may wait for a lock
        if wal:  # a read-only connection cannot switch modes; it reads the file in whatever mode it is
            cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, and vice versa
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so writers queue instead of failing.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("eptctl_write") else "BEGIN")


class Database:
    """An engine plus the two ways the registry talks to it: a read snapshot, and a retried write transaction."""

    def __init__(self, url: str):
        self.url = url
        self.display_url = mask_url(url)
        self.timeout = lock_timeout()
        self.read_only = sqlite_read_only(url)  # why it cannot be written, or None
        path = sqlite_file(url)
        if self.read_only and path is not None and not path.exists():
            raise RegistryError(f"the registry {self.display_url} does not exist and cannot be created: "
                                f"{self.read_only}", hint="pass --registry with a writable location (or set "
                                f"${URL_ENV}), or set $EPTCTL_HOME to a writable folder")
        self.engine = create_engine(url, self.timeout, read_only=self.read_only is not None)

    @property
    def sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def connect(self) -> Connection:
        try:
            return self.engine.connect()
        except sa.exc.OperationalError as exc:
            if _transient(exc):  # the connection's own pragmas met another process's lock: not a dead server
                raise locked(self.display_url, self.timeout) from None
            raise unreachable(self.url, exc) from None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One transaction, so that several queries see the same snapshot (WAL on SQLite, MVCC on PostgreSQL)."""
        with self.connect() as conn, conn.begin():
            yield conn

    def write(self, fn: Callable[[Connection], T], schema_change: bool = False) -> T:
        """Run ``fn(conn)`` in one write transaction; retry it from scratch on lock timeouts and serialization
        failures, so that concurrent writers queue instead of surfacing an error.

        On SQLite the transaction holds the database's write lock from its first statement (BEGIN IMMEDIATE); on
        PostgreSQL ``fn`` takes the row or advisory locks it needs.

        ``schema_change``: on SQLite, foreign keys are off during the transaction (a batch migration drops and
        re-creates tables, and with them on, dropping a parent table would cascade into its children) and checked
        in full before the commit.

        Raises ``RegistryError`` (another process holds the registry) when locks kept it waiting for
        ``$EPTCTL_REGISTRY_TIMEOUT`` seconds, and at once (nothing tried) when the SQLite file is read-only.
        """
        if self.read_only:
            raise read_only_error(self.display_url, self.read_only)
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                with self.connect() as conn:
                    conn.execution_options(eptctl_write=True)
                    with _foreign_keys_off(conn, self.sqlite and schema_change), conn.begin():
                        result = fn(conn)
                        if self.sqlite and schema_change:
                            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                            if broken:
                                raise RegistryError(f"a migration broke {len(broken)} foreign key(s): {broken[:3]}")
                        return result
            except sa.exc.DBAPIError as exc:
                if not _transient(exc):
                    raise
                if time.monotonic() > deadline:
                    raise locked(self.display_url, self.timeout) from None
            time.sleep(delay * (1 + random.random()))  # jitter: writers that collided do not collide again in step
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def _foreign_keys_off(conn: Connection, off: bool) -> Iterator[None]:
    # The pragma is a no-op inside a transaction, so it goes to the driver connection (autocommit) before BEGIN.
    if not off:
        yield
        return
    raw = conn.connection.driver_connection
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")  # the connection goes back to the pool as every other one


def _transient(exc: sa.exc.DBAPIError) -> bool:
    text = str(exc.orig).lower()
    if "database is locked" in text or "database is busy" in text or "database table is locked" in text:
        return True
    # PostgreSQL: serialization_failure, deadlock_detected, lock_not_available
    return getattr(exc.orig, "sqlstate", None) in ("40001", "40P01", "55P03")


def lock_blob(conn: Connection, sha256: str) -> None:
    """Serialize everything that creates or removes references to one artifact file.

    SQLite needs nothing more: the write transaction already holds the database lock. PostgreSQL takes a
    transaction-scoped advisory lock keyed by the first 63 bits of the sha256.
    """
    if not is_sqlite(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(sha256[:16], 16) >> 1})


def unreachable(url: str, exc: Exception) -> RegistryError:
    masked = mask_url(url)
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = make_url(url).password if "://" in url else None
    if password:
        reason = reason.replace(str(password), "***")
    return RegistryError(
        f"cannot reach the registry database at {masked}",
        hint=f"check that the server is running and the URL is right (--registry or ${URL_ENV}); driver: {reason}",
    )
