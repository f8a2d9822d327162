"""Writes of the SQLAlchemy store: tasks, new adapters, metrics, aliases, tags and status, one transaction each."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from registry import ranking, refs, sql_insert
from registry.db import Database, RegistryError
from registry.interface import Insertion, RegistryWrites
from registry.records import MetricValue, NewAdapter, TaskRecord
from registry.schema import adapters, aliases, tags
from registry.store import Blob


class SqlWrites(RegistryWrites):
    """``RegistryWrites`` over ``self.db``. A write that follows a read of the same adapter first locks the
    adapter's row (``_still_there``), so a concurrent delete turns into a ``RegistryError``, not a foreign-key error."""

    db: Database

    def ensure_task(self, task: TaskRecord) -> None:
        try:
            self.db.write(lambda conn: sql_insert.create_task_if_missing(conn, task))
        except sa.exc.IntegrityError:
            pass  # PostgreSQL: another process created it between our check and our insert

    def insert_adapter(self, new: NewAdapter, blobs: dict[str, Blob], insertion: Insertion,
                       present: Callable[[Blob], bool]) -> None:
        try:
            self.db.write(lambda conn: sql_insert.insert_adapter_rows(conn, new, blobs, insertion, present))
        except sa.exc.IntegrityError:
            if insertion.imported:  # PostgreSQL: a concurrent import of the same id won
                raise sql_insert.already_present(insertion.adapter_id) from None
            raise

    def add_metrics(self, adapter_id: str, name: str, values: list[MetricValue]) -> None:
        def write(conn: Connection) -> None:
            _still_there(conn, adapter_id, name, "evaluated", "metrics not stored")
            ranking.write_metrics(conn, adapter_id, values)

        self.db.write(write)

    def set_alias(self, adapter_id: str, name: str, alias: str) -> None:
        def move(conn: Connection) -> None:
            task_id = _still_there(conn, adapter_id, name, "aliased", f"alias {alias!r} not set")
            conn.execute(aliases.delete().where(aliases.c.task_id == task_id, aliases.c.name == alias))
            conn.execute(aliases.insert().values(task_id=task_id, name=alias, adapter_id=adapter_id))

        self.db.write(move)

    def remove_alias(self, task: str, alias: str) -> bool:
        def remove(conn: Connection) -> int:
            task_id = refs.task_row(conn, task).id
            return conn.execute(aliases.delete().where(aliases.c.task_id == task_id, aliases.c.name == alias)).rowcount

        return bool(self.db.write(remove))

    def add_tags(self, adapter_id: str, name: str, new_tags: list[str]) -> None:
        def add(conn: Connection) -> None:
            _still_there(conn, adapter_id, name, "tagged", "tags not added")
            have = set(conn.execute(sa.select(tags.c.tag).where(tags.c.adapter_id == adapter_id)).scalars())
            missing = sorted(set(new_tags) - have)
            if missing:
                conn.execute(tags.insert(), [{"adapter_id": adapter_id, "tag": t} for t in missing])

        self.db.write(add)

    def remove_tags(self, adapter_id: str, name: str, old_tags: list[str]) -> None:
        def remove(conn: Connection) -> None:
            _still_there(conn, adapter_id, name, "untagged", "tags not removed")
            conn.execute(tags.delete().where(tags.c.adapter_id == adapter_id, tags.c.tag.in_(old_tags)))

        self.db.write(remove)

    def set_archived(self, adapter_id: str, name: str, archived: bool) -> None:
        status = "archived" if archived else "ready"
        update = adapters.update().where(adapters.c.id == adapter_id).values(status=status)

        def write(conn: Connection) -> None:
            _still_there(conn, adapter_id, name, "archived" if archived else "restored", "status not changed")
            conn.execute(update)

        self.db.write(write)


def _still_there(conn: Connection, adapter_id: str, name: str, doing: str, lost: str) -> int:
    """The adapter's task id, with its row locked for this transaction (PostgreSQL: FOR UPDATE; SQLite holds the
    write lock); a ``RegistryError`` if it was deleted since the caller resolved it, so a write that follows a read
    never dies on a foreign key."""
    query = sa.select(adapters.c.task_id).where(adapters.c.id == adapter_id).with_for_update()
    task_id = conn.execute(query).scalar()
    if task_id is None:
        raise RegistryError(f"{name} was deleted while it was being {doing}; {lost}",
                            hint="see `eptctl list`; nothing was written")
    return task_id
