"""TES tasks (the GA4GH TES face): a task's document beside its job's row

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 11:30:00

A TES task is a job (``jobs``) with its submitted document kept here; the row goes
with its job (ON DELETE CASCADE). Two indexes serve the TES listing, newest first
with the id as tie-breaker (the page token's order): every task (admins), and one
user's tasks; a name prefix is then a filter on that range.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tes_tasks",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_tes_tasks_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_tes_tasks_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_tes_tasks")),
    )
    op.create_index("ix_tes_tasks_created", "tes_tasks", ["created_at", "job_id"], unique=False)
    op.create_index(
        "ix_tes_tasks_user_created",
        "tes_tasks",
        ["user_id", "created_at", "job_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_tes_tasks_user_created", table_name="tes_tasks")
    op.drop_index("ix_tes_tasks_created", table_name="tes_tasks")
    op.drop_table("tes_tasks")
