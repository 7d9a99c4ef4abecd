"""Index matching the claim's order: state, runner, priority desc, created_at, id

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 04:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_claim",
        "jobs",
        ["state", "runner", sa.text("priority DESC"), "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
