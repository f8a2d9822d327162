"""Adapter references: an id prefix, ``TASK@VERSION`` (or ``@vN``), ``TASK@latest``, ``TASK@best``, ``TASK@ALIAS``.

Also the rules for the names users choose (tasks, aliases, tags), checked where they enter the registry.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from registry.db import RegistryError
from registry.ranking import ranked_value
from registry.records import DEFAULT_SPLITS, RESERVED_ALIASES
from registry.schema import adapters, aliases, tasks

REF_FORMS = "an id prefix, TASK@VERSION, TASK@latest, TASK@best or TASK@ALIAS"
MIN_PREFIX = 4
_HEX = re.compile(r"[0-9a-f]{%d,32}" % MIN_PREFIX)
_VERSION = re.compile(r"v?(\d+)")
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:+-]{0,199}")  # no "@": it separates task and version
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,199}")  # aliases and tags


def check_task_name(name: str) -> None:
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise RegistryError(
            f"invalid task name {name!r}",
            hint="use letters, digits and . _ / : + - (at most 200 characters, no '@' or spaces)",
        )


def check_alias(alias: str) -> None:
    if alias in RESERVED_ALIASES:
        raise RegistryError(f"the alias {alias!r} is reserved", hint="@latest and @best are computed; pick another")
    if not isinstance(alias, str) or not _LABEL.fullmatch(alias) or _VERSION.fullmatch(alias):
        raise RegistryError(
            f"invalid alias {alias!r}",
            hint="start with a letter, then letters, digits, . _ - (a name like v3 would read as a version)",
        )


def check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not _LABEL.fullmatch(tag):
        raise RegistryError(f"invalid tag {tag!r}", hint="start with a letter, then letters, digits, . _ -")


def task_row(conn: Connection, name: str) -> Row:
    row = conn.execute(sa.select(tasks).where(tasks.c.name == name)).first()
    if row is None:
        # a builtin task (`eptctl tasks` lists it) has no row here until its first adapter: say what is missing
        raise RegistryError(f"unknown task {name!r} in this registry: no adapter has been trained for it",
                            hint=f"train one with `eptctl train {name}`; `eptctl list` shows what is stored")
    return row


def resolve_id(conn: Connection, ref: str) -> str:
    """The adapter id ``ref`` points to, or a RegistryError that says which part did not match."""
    ref = ref.strip()
    if "@" in ref:
        name, _, what = ref.rpartition("@")
        return _resolve_in_task(conn, task_row(conn, name), what)
    if _HEX.fullmatch(ref.lower()):
        found = _by_prefix(conn, ref.lower())
        if found:
            return found
    if conn.execute(sa.select(tasks.c.id).where(tasks.c.name == ref)).first() is not None:
        return _resolve_in_task(conn, task_row(conn, ref), "latest")  # a bare task name means its latest
    raise RegistryError(f"no adapter matches {ref!r}", hint=f"a reference is {REF_FORMS}; see `eptctl list`")


def _by_prefix(conn: Connection, prefix: str) -> str | None:
    # A range on the primary key instead of LIKE: it uses the index on both backends ("g" sorts after any hex digit).
    rows = conn.execute(
        sa.select(adapters.c.id).where(adapters.c.id >= prefix, adapters.c.id < prefix + "g").limit(6)
    ).all()
    ids = [r.id for r in rows if r.id.startswith(prefix)]
    if len(ids) > 1:
        shown = ", ".join(i[:12] for i in ids[:5])
        raise RegistryError(f"{prefix!r} matches several adapters ({shown}…)", hint="type more characters of the id")
    return ids[0] if ids else None


def _resolve_in_task(conn: Connection, task: Row, what: str) -> str:
    in_task = sa.select(adapters.c.id).where(adapters.c.task_id == task.id)
    ready = in_task.where(adapters.c.status == "ready")
    hint = f"list the adapters of this task with `eptctl list --task {task.name}`"
    version = _VERSION.fullmatch(what)
    if version:
        found = conn.execute(in_task.where(adapters.c.version == int(version.group(1)))).scalar()
        if found is None:
            raise RegistryError(f"task {task.name!r} has no version {int(version.group(1))}", hint=hint)
        return found
    if what == "latest":
        found = conn.execute(ready.order_by(adapters.c.version.desc()).limit(1)).scalar()
        if found is None:
            train = f"train one with `eptctl train {task.name}`"
            raise RegistryError(f"task {task.name!r} has no ready adapter", hint=train)
        return found
    if what == "best":
        # Rank on validation; only a task none of whose ready adapters has a validation value ranks on test.
        found = None
        for split in DEFAULT_SPLITS:
            query, value = ranked_value(ready, f"{split}:{task.metric}")
            query = query.where(value.is_not(None)).order_by(value.desc(), adapters.c.version.desc()).limit(1)
            found = conn.execute(query).scalar()
            if found is not None:
                break
        if found is None:
            raise RegistryError(
                f"no adapter of task {task.name!r} has a {task.metric!r} metric on validation or test",
                hint=f"evaluate one with `eptctl eval`, or use {task.name}@latest",
            )
        return found
    found = conn.execute(
        sa.select(aliases.c.adapter_id).where(aliases.c.task_id == task.id, aliases.c.name == what)
    ).scalar()
    if found is None:
        raise RegistryError(f"task {task.name!r} has no alias {what!r}", hint=f"a reference is {REF_FORMS}")
    return found
