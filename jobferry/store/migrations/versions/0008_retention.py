"""Retention: when a job's files expired, and the indexes its rounds read

``jobs.files_expired_at`` records that retention deleted the job's directory, so
its files answer 410 Gone whether or not a directory is there. The two indexes
serve a retention round: ended jobs whose files are still there, by end time,
and ended jobs by end time (row purges).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 20:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("files_expired_at", sa.DateTime(), nullable=True))
    op.create_index("ix_jobs_files_expiry", "jobs", ["files_expired_at", "finished_at"])
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_files_expiry", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("files_expired_at")
