"""Nodes sharing the store (heartbeat, resources, drain); the node holding a job's files

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 05:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("drained", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("cores_total", sa.Integer(), nullable=False),
        sa.Column("memory_mb_total", sa.Integer(), nullable=False),
        sa.Column("gpus_total", sa.Integer(), nullable=False),
        sa.Column("cores_free", sa.Integer(), nullable=False),
        sa.Column("memory_mb_free", sa.Integer(), nullable=False),
        sa.Column("gpus_free", sa.Integer(), nullable=False),
        sa.Column("running_jobs", sa.Integer(), nullable=False),
        sa.Column("incarnation", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("home_node", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("home_node")
    op.drop_table("nodes")
