"""A job's runner options: what its submission asked of the runner beyond its destination

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 15:00:00

``jobs.runner_options`` (JSON, NULL for most jobs) holds per-job choices that a
runner reads when it starts an attempt, over its destination's own: today a TES
task's Slurm backend parameters (``{"partition": ..., "qos": ...}``), which
``ExecutionService.spec`` turns into sbatch's ``--partition`` and ``--qos``. Kept
on the row (not only in the task's plan) so every attempt, on any node, reads it
from the claim itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: a plain ALTER TABLE on both engines (no
    # table copy on SQLite, no rewrite on PostgreSQL), however many jobs there are.
    op.add_column("jobs", sa.Column("runner_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("runner_options")
