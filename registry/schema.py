"""SQLAlchemy tables of the registry. Alembic migrations in ``migrations/`` must match these exactly (a test checks).

Core tables rather than ORM classes: the API builds dataclasses straight from rows, which keeps listing 10,000
adapters cheap and makes it impossible for an ORM row to leak out of ``registry/``.
"""

from __future__ import annotations

import sqlalchemy as sa

# Every constraint and index gets a deterministic name, so migrations can drop or alter it on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

ID = sa.String(32)  # uuid4 hex
SHA256 = sa.String(64)
NAME = sa.String(200)
TIMESTAMP = sa.DateTime(timezone=True)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", NAME, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("metric", NAME, nullable=False),
    sa.Column("source", sa.JSON, nullable=False),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("task_type", sa.String(32), nullable=False, server_default="classification"),  # since 0004
    sa.Column("created_at", TIMESTAMP, nullable=False),
    # The last version handed out. Incremented inside the registering transaction, so a rollback returns it:
    # versions are gapless, and never reused after a delete.
    sa.Column("last_version", sa.Integer, nullable=False),
    sa.UniqueConstraint("name"),
)

# One row per distinct frozen model: thousands of adapters share a handful, and a listing reads each once.
backbones = sa.Table(
    "backbones",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", SHA256, nullable=False),  # sha256 of the canonical JSON of all the fields below
    sa.Column("name", sa.String(500), nullable=False),  # model name or local path
    sa.Column("revision", NAME, nullable=True),
    sa.Column("embedding_sha256", SHA256, nullable=False),
    sa.Column("tokenizer_sha256", SHA256, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("max_length", sa.Integer, nullable=False),
    sa.UniqueConstraint("key"),
    sa.Index(None, "name"),
    sa.Index(None, "embedding_sha256"),
)

adapters = sa.Table(
    "adapters",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="RESTRICT"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("method", NAME, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("params_by_group", sa.JSON, nullable=False),
    sa.Column("trainable_params", sa.BigInteger, nullable=False),
    sa.Column("backbone_id", sa.Integer, sa.ForeignKey("backbones.id", ondelete="RESTRICT"), nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.UniqueConstraint("task_id", "version"),
    sa.CheckConstraint("version >= 1", name="version_positive"),
    sa.CheckConstraint("status IN ('ready', 'archived')", name="status"),
    sa.Index(None, "created_at"),
    sa.Index(None, "backbone_id"),
    sa.Index(None, "method"),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("adapter_id", ID, sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    # Content address: several rows may share one sha256 (and so one file).
    sa.Column("sha256", SHA256, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("path", sa.String(200), nullable=False),  # relative to the artifact store root
    sa.CheckConstraint("kind IN ('servable', 'training_state')", name="kind"),
    sa.Index(None, "sha256"),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("adapter_id", ID, sa.ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False),
    sa.Column("split", NAME, nullable=False),
    sa.Column("name", NAME, nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("step", sa.Integer, nullable=True),  # NULL: the final value
    # Exactly one row per (adapter, split, name) is final: no step, else the highest. Kept by registry.ranking, so
    # that ranking by a metric is a plain join instead of a per-adapter "latest step" subquery.
    sa.Column("final", sa.Boolean, nullable=False),
    sa.Index(None, "adapter_id", "name", "split", "final"),
)

lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("child_id", ID, sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
    # No foreign key: a child keeps the id of a deleted parent (migration 0003); ``Registry.parents`` skips it.
    sa.Column("parent_id", ID, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),  # parents keep the order they were given in
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("how", NAME, nullable=False),
    sa.Index(None, "parent_id"),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", NAME, primary_key=True),
    sa.Column("adapter_id", ID, sa.ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False),
    sa.Index(None, "adapter_id"),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("adapter_id", ID, sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tag", NAME, primary_key=True),
    sa.Index(None, "tag"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("adapter_id", ID, sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("seed", sa.BigInteger, nullable=True),
    sa.Column("data_fingerprint", sa.String(200), nullable=True),
    sa.Column("package_versions", sa.JSON, nullable=False),
    sa.Column("command_line", sa.Text, nullable=True),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("device", NAME, nullable=True),
)
