"""Fixtures and helpers for the registry tests: real SQLite files and the real PostgreSQL server, never mocks.

Each PostgreSQL test gets a fresh database (created through the ``postgres`` maintenance database, dropped
afterwards). If the server cannot be reached the tests are skipped, except under CI (``$CI`` set) where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("EPTCTL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TASK = "rt-polarity"
BACKBONE_KW = dict(
    name="tiny-random-llama",
    revision="abc123",
    embedding_sha256="e" * 64,
    tokenizer_sha256="f" * 64,
    width=16,
    max_length=128,
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@cache
def _admin_engine() -> sa.Engine:
    url = make_url(PG_URL).set(database="postgres")
    return sa.create_engine(
        url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}, poolclass=sa.NullPool
    )


@cache
def pg_unreachable() -> str | None:
    try:
        with _admin_engine().connect():
            return None
    except sa.exc.OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0]


def require_postgres() -> None:
    """Skip the calling test if the server is unreachable; under CI (``$CI`` set), fail it instead."""
    reason = pg_unreachable()
    if reason:
        msg = f"PostgreSQL at {make_url(PG_URL).render_as_string(hide_password=True)} is unreachable: {reason}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """URL of a brand-new, uniquely named, empty PostgreSQL database, dropped on exit."""
    name = f"eptctl_test_{uuid.uuid4().hex[:16]}"
    with _admin_engine().connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin_engine().connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url():
    require_postgres()
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request, eptctl_home):
    """An empty database on the backend named by the parameter ("sqlite" or "postgres")."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def reg(db_url):
    """A Registry on an empty database, with the task ``rt-polarity``."""
    from registry import Registry, TaskRecord

    r = Registry(db_url)
    r.ensure_task(TaskRecord(TASK, "Movie review polarity", ["negative", "positive"]))
    yield r
    r.close()


def backbone(**overrides):
    from registry import BackboneFingerprint

    return BackboneFingerprint(**{**BACKBONE_KW, **overrides})


def new_adapter(task: str = TASK, seed: int | None = 0, **overrides):
    """A tiny NewAdapter; different seeds give different bytes (so different files)."""
    import torch

    from registry import NewAdapter

    gen = torch.Generator().manual_seed(seed if seed is not None else 0)
    kw = dict(
        task=task,
        method="ept",
        config={"prompt_length": 4, "rank": 2, "seed": seed},
        params_by_group={"prompt": 64, "lora_a": 32, "lora_b": 32},
        backbone=backbone(),
        servable={"prompt": torch.randn(4, 16, generator=gen), "a": torch.randn(2, 16, generator=gen)},
    )
    kw.update(overrides)
    return NewAdapter(**kw)
