"""Alembic environment: runs on the connection the registry hands over (inside its own locked transaction)."""

from __future__ import annotations

from alembic import context

from registry import db
from registry.schema import metadata

config = context.config


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table (copy, drop, rename).
        render_as_batch=kwargs.pop("dialect_name", None) == "sqlite",
        **kwargs,
    )


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # the registry's own call: it owns the transaction and the schema lock
        _configure(connection=connection, dialect_name=connection.dialect.name)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = db.create_engine(db.resolve_url(config.get_main_option("sqlalchemy.url")))
    try:
        with engine.connect() as conn:
            _configure(connection=conn, dialect_name=conn.dialect.name)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def run_offline() -> None:
    url = db.resolve_url(config.get_main_option("sqlalchemy.url"))
    _configure(url=url, literal_binds=True, dialect_name=url.partition(":")[0].partition("+")[0])
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
