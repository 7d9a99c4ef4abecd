"""Drop ix_jobs_state_priority_created: the other state-led indexes serve its queries

``ix_jobs_claim`` (state, destination, priority DESC, created_at, id) and
``ix_jobs_state_updated`` (state, updated_at, id) begin with the state too, so the
queries that filtered on the state alone (metrics' live counts, a node's running
jobs, the fair-share count, running jobs per destination, claims by runner) read
one of their prefixes instead: SQLite (EXPLAIN QUERY PLAN) takes ix_jobs_claim,
PostgreSQL (EXPLAIN ANALYZE, 30k jobs) the same bitmap scan on ix_jobs_state_updated;
the listings and retention never used it. One index fewer is one B-tree fewer to
update on every insert and every state change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 08:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_state_priority_created", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "ix_jobs_state_priority_created",
        "jobs",
        ["state", "priority", "created_at"],
        unique=False,
    )
