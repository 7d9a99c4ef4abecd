"""The browser's job list filtered by state, newest first: one index range

Without it a state filter walks ``ix_jobs_created`` newest first and skips every job
in another state: ~25 rows per page for a common state, the whole table's recent
history for a rare one (``running``: ~2,500 rows read for 50 shown at 100,000 jobs).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 08:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_state_created", table_name="jobs")
