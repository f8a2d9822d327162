"""Alembic, driven from code: the migrations ship inside the wheel (package ``migrations``), no alembic.ini needed."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from registry import db
from registry.schema import metadata

# Both backends: one lock so that processes opening a brand-new database at once create it once.
_PG_SCHEMA_LOCK = 0x6570_7463_746C  # "eptctl"


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    import migrations  # the installed package: works from a wheel and from a checkout alike

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def revision_of(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def current_revision(url: str | None = None) -> str | None:
    """The schema revision of the database at ``url`` (None: empty, no schema yet)."""
    database = db.Database(db.resolve_url(url))
    try:
        with database.read() as conn:
            return revision_of(conn)
    finally:
        database.close()


def upgrade(url: str | None = None, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate the database at ``url`` to ``revision``; returns (revision before, revision after)."""
    return _migrate(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str | None = None, revision: str = "base") -> tuple[str | None, str | None]:
    return _migrate(url, lambda cfg: command.downgrade(cfg, revision))


def newer_schema_error(where: str, revision: str) -> db.RegistryError:
    """The error for a database whose schema revision this eptctl does not know: a newer eptctl wrote it."""
    return db.RegistryError(
        f"the registry schema at {where} is newer than this eptctl understands: a newer eptctl wrote it "
        f"(revision {revision})",
        hint="upgrade eptctl (pip install -U eptctl); this eptctl leaves the database as it is",
    )


def check_known(revision: str | None, where: str) -> None:
    """Raise ``RegistryError`` for a schema revision this eptctl does not know (None, an empty database, is fine)."""
    if revision is not None and revision not in known_revisions():
        raise newer_schema_error(where, revision)


def _migrate(url, step) -> tuple[str | None, str | None]:
    database = db.Database(db.resolve_url(url))

    def run(conn: Connection):
        _lock_schema(conn)
        before = revision_of(conn)
        check_known(before, database.display_url)  # never hand Alembic a revision it cannot place
        step(alembic_config(conn))
        return before, revision_of(conn)

    try:
        return database.write(run, schema_change=True)
    finally:
        database.close()


def ensure_schema(database: db.Database, explicit_url: str | None) -> None:
    """Create a brand-new database at head; refuse an out-of-date or unknown one with the command that fixes it."""
    head = head_revision()
    with database.read() as conn:
        if revision_of(conn) == head:
            return  # the common case: one cheap read, no lock

    def check_and_create(conn: Connection) -> None:
        _lock_schema(conn)
        current = revision_of(conn)  # again, under the lock: another process may have just created it
        if current == head:
            return
        where = database.display_url
        if current is None:
            ours = set(metadata.tables) | {"alembic_version"}
            if set(sa.inspect(conn).get_table_names()) & ours:
                raise db.RegistryError(
                    f"the database at {where} has registry tables but no schema revision",
                    hint="point --registry at an empty database, or restore this one from a backup",
                )
            command.upgrade(alembic_config(conn), "head")
            return
        if current in known_revisions():
            raise db.RegistryError(
                f"the registry schema at {where} is out of date (revision {current}, this eptctl needs {head})",
                hint=db.upgrade_hint(explicit_url),
            )
        raise newer_schema_error(where, current)

    database.write(check_and_create, schema_change=True)


def _lock_schema(conn: Connection) -> None:
    # SQLite: the write transaction (BEGIN IMMEDIATE) is already exclusive among writers.
    if not db.is_sqlite(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
