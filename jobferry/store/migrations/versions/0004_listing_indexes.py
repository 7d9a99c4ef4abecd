"""Indexes for job listings newest first: overall, per user, per state, by creation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 04:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_jobs_updated": ["updated_at", "id"],
    "ix_jobs_user_updated": ["user_id", "updated_at", "id"],
    "ix_jobs_created": ["created_at", "id"],
    "ix_jobs_state_updated": ["state", "updated_at", "id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns, unique=False)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="jobs")
