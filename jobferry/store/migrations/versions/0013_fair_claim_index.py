"""ix_jobs_claim gains user_id after the priority: a claim reads one row per user

The claim's order is best priority, then the user with the fewest jobs running (fair
share), then oldest. With (state, destination, priority DESC, created_at, id), the
fair-share term came between two index columns, so SQLite sorted every queued job of
the claim's destinations on every claim (about 0.5 ms a claim with 1,000 queued jobs,
growing with the queue). With user_id after the priority, each user's oldest job at a
priority is the first index entry after (state, destination, priority, user): the
claim walks the users with queued jobs (``store.fair_claim``), one seek each. Every
query that read a prefix of the old index (the state; the state and destination)
reads the same prefix of this one.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index(
        "ix_jobs_claim",
        "jobs",
        ["state", "destination", sa.text("priority DESC"), "user_id", "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index(
        "ix_jobs_claim",
        "jobs",
        ["state", "destination", sa.text("priority DESC"), "created_at", "id"],
        unique=False,
    )
