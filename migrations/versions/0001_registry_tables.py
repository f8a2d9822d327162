"""Registry tables: tasks, backbones, adapters, artifacts, metrics, lineage, aliases, tags, runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(32)
SHA256 = sa.String(64)
NAME = sa.String(200)


def _cascade(table: str, column: str = "adapter_id") -> sa.ForeignKeyConstraint:
    """A row that describes an adapter goes when the adapter goes."""
    name = op.f(f"fk_{table}_{column}_adapters")
    return sa.ForeignKeyConstraint([column], ["adapters.id"], name=name, ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("metric", NAME, nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("name", name=op.f("uq_tasks_name")),
    )
    op.create_table(
        "backbones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", SHA256, nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("revision", NAME, nullable=True),
        sa.Column("embedding_sha256", SHA256, nullable=False),
        sa.Column("tokenizer_sha256", SHA256, nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("max_length", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backbones")),
        sa.UniqueConstraint("key", name=op.f("uq_backbones_key")),
    )
    op.create_table(
        "adapters",
        sa.Column("id", ID, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("method", NAME, nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("params_by_group", sa.JSON(), nullable=False),
        sa.Column("trainable_params", sa.BigInteger(), nullable=False),
        sa.Column("backbone_id", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.CheckConstraint("status IN ('ready', 'archived')", name=op.f("ck_adapters_status")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_adapters_version_positive")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_adapters_task_id_tasks"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(
            ["backbone_id"], ["backbones.id"], name=op.f("fk_adapters_backbone_id_backbones"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("task_id", "version", name=op.f("uq_adapters_task_id_version")),
    )
    op.create_table(
        "aliases",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("adapter_id", ID, nullable=False),
        _cascade("aliases"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_aliases_task_id_tasks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "name", name=op.f("pk_aliases")),
    )
    op.create_index(op.f("ix_aliases_adapter_id"), "aliases", ["adapter_id"])
    op.create_table(
        "artifacts",
        sa.Column("adapter_id", ID, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sha256", SHA256, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("path", NAME, nullable=False),
        sa.CheckConstraint("kind IN ('servable', 'training_state')", name=op.f("ck_artifacts_kind")),
        _cascade("artifacts"),
        sa.PrimaryKeyConstraint("adapter_id", "kind", name=op.f("pk_artifacts")),
    )
    op.create_index(op.f("ix_artifacts_sha256"), "artifacts", ["sha256"])
    op.create_table(
        "lineage",
        sa.Column("child_id", ID, nullable=False),
        sa.Column("parent_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("how", NAME, nullable=False),
        _cascade("lineage", "child_id"),
        _cascade("lineage", "parent_id"),
        sa.PrimaryKeyConstraint("child_id", "parent_id", name=op.f("pk_lineage")),
    )
    op.create_index(op.f("ix_lineage_parent_id"), "lineage", ["parent_id"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", ID, nullable=False),
        sa.Column("split", NAME, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        _cascade("metrics"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics")),
    )
    op.create_table(
        "runs",
        sa.Column("adapter_id", ID, nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("data_fingerprint", NAME, nullable=True),
        sa.Column("package_versions", sa.JSON(), nullable=False),
        sa.Column("command_line", sa.Text(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("device", NAME, nullable=True),
        _cascade("runs"),
        sa.PrimaryKeyConstraint("adapter_id", name=op.f("pk_runs")),
    )
    op.create_table(
        "tags",
        sa.Column("adapter_id", ID, nullable=False),
        sa.Column("tag", NAME, nullable=False),
        _cascade("tags"),
        sa.PrimaryKeyConstraint("adapter_id", "tag", name=op.f("pk_tags")),
    )


def downgrade() -> None:
    # Children first: foreign keys are enforced on both backends.
    for table in ("tags", "runs", "metrics", "lineage", "artifacts", "aliases", "adapters", "backbones", "tasks"):
        op.drop_table(table)
