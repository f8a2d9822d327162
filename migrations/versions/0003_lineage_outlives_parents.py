"""Lineage outlives its parents: a child keeps the id of a deleted parent and how it was initialised.

Drops the foreign key from ``lineage.parent_id`` to ``adapters.id`` (which cascaded the link away on delete); the
link from ``lineage.child_id`` still cascades, so deleting the child removes its own links.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FK = "fk_lineage_parent_id_adapters"


def upgrade() -> None:
    with op.batch_alter_table("lineage") as batch:
        batch.drop_constraint(FK, type_="foreignkey")


def downgrade() -> None:
    # Links to deleted parents cannot satisfy the restored key: they go, as a delete did before 0003.
    op.execute("DELETE FROM lineage WHERE parent_id NOT IN (SELECT id FROM adapters)")
    with op.batch_alter_table("lineage") as batch:
        batch.create_foreign_key(FK, "adapters", ["parent_id"], ["id"], ondelete="CASCADE")
