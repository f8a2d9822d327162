"""Task types: a task is a classification (labels), generation (target texts) or regression (numbers) task.

Adds ``tasks.task_type`` (existing rows are classification tasks, as every task was before 0004). A regression
task's grid and target range travel in ``tasks.source`` like a classification task's verbalizer.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("task_type", sa.String(32), nullable=False, server_default="classification"))


def downgrade() -> None:
    # An older eptctl would read a generation or regression task as a classification task without labels.
    op.execute("DELETE FROM tasks WHERE task_type <> 'classification' AND id NOT IN (SELECT task_id FROM adapters)")
    remaining = op.get_bind().execute(sa.text("SELECT count(*) FROM tasks WHERE task_type <> 'classification'"))
    if remaining.scalar():
        raise RuntimeError("generation or regression adapters are stored: delete them before downgrading below 0004")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("task_type")
