"""Maintenance of the SQLAlchemy store: deletes, the references ``gc`` needs, and the schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from registry import migrate
from registry.db import Database, RegistryError, lock_blob
from registry.interface import RegistryMaintenance
from registry.records import AdapterRecord
from registry.schema import adapters, artifacts, runs
from registry.sql_reads import child_ids


class SqlMaintenance(RegistryMaintenance):
    """``RegistryMaintenance`` over ``self.db``."""

    db: Database

    def delete_adapter(self, rec: AdapterRecord, force: bool) -> None:
        def remove(conn: Connection) -> None:
            kids = child_ids(conn, rec.id)
            if kids and not force:
                raise RegistryError(
                    f"adapter {rec.ref} is a parent of {len(kids)} other adapter(s)",
                    hint=f"see `eptctl show {rec.ref}`; pass --force to delete it anyway (children keep its id)",
                )
            conn.execute(adapters.delete().where(adapters.c.id == rec.id))  # cascades to every child table

        self.db.write(remove)

    def referenced_sha256s(self) -> set[str]:
        with self.db.read() as conn:
            return set(conn.execute(sa.select(artifacts.c.sha256).distinct()).scalars())

    def remove_if_unreferenced(self, sha256: str, remove: Callable[[], Path | None]) -> Path | None:
        def check_and_remove(conn: Connection) -> Path | None:
            lock_blob(conn, sha256)  # the lock insert_adapter takes: no row can start referencing it meanwhile
            if conn.execute(sa.select(artifacts.c.sha256).where(artifacts.c.sha256 == sha256).limit(1)).first():
                return None
            return remove()

        return self.db.write(check_and_remove)

    def scrub_command_lines(self, mask: Callable[[str], str], dry_run: bool) -> list[str]:
        def scrub(conn: Connection) -> list[str]:
            rows = conn.execute(sa.select(runs.c.adapter_id, runs.c.command_line)
                                .where(runs.c.command_line.is_not(None)).order_by(runs.c.adapter_id)).all()
            changed = [(adapter_id, mask(line)) for adapter_id, line in rows if mask(line) != line]
            for adapter_id, masked in [] if dry_run else changed:
                conn.execute(runs.update().where(runs.c.adapter_id == adapter_id).values(command_line=masked))
            return [adapter_id for adapter_id, _ in changed]

        return self.db.write(scrub)

    def upgrade(self) -> tuple[str | None, str | None]:
        return migrate.upgrade(self.db.url)
