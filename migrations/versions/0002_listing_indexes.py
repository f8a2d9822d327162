"""Indexes for listing and ranking: filters (method, backbone, tag), sort by created, metric lookups per adapter.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_adapters_created_at", "adapters", ["created_at"]),
    ("ix_adapters_backbone_id", "adapters", ["backbone_id"]),
    ("ix_adapters_method", "adapters", ["method"]),
    ("ix_backbones_name", "backbones", ["name"]),
    ("ix_backbones_embedding_sha256", "backbones", ["embedding_sha256"]),
    # The join that ranks adapters by the final value of one metric.
    ("ix_metrics_adapter_id_name_split_final", "metrics", ["adapter_id", "name", "split", "final"]),
    ("ix_tags_tag", "tags", ["tag"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(op.f(name), table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(op.f(name), table_name=table)
