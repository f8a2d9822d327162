"""``SqlAlchemyStore``: the ``RegistryStore`` over SQLite or PostgreSQL (reads, writes and maintenance together)."""

from __future__ import annotations

from pathlib import Path

from registry import migrate
from registry.db import Database, resolve_url
from registry.interface import RegistryStore
from registry.sql_maintenance import SqlMaintenance
from registry.sql_reads import SqlReads
from registry.sql_writes import SqlWrites


class SqlAlchemyStore(SqlReads, SqlWrites, SqlMaintenance, RegistryStore):
    """The rows of a registry in the database at ``url`` (None: ``$EPTCTL_REGISTRY_URL``, else the SQLite file in
    ``$EPTCTL_HOME``); records carry artifact paths under ``root``.

    Opening creates an empty database's schema at head. Raises ``RegistryError`` if the database cannot be reached
    or its schema is out of date or unknown.
    """

    def __init__(self, url: str | None, root: Path | str):
        super().__init__(Database(resolve_url(url)), root)
        self.display_url = self.db.display_url
        try:
            migrate.ensure_schema(self.db, url)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()
