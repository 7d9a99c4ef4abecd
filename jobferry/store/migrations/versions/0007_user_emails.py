"""Every user has an email: NAME@localhost for users created without one

Galaxy's clients expect ``email`` to be a string. The column stays nullable
(making it NOT NULL would rebuild ``users`` on SQLite, whose DROP TABLE cascades
to the API keys); jobferry itself never writes a NULL any more.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 13:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

USERS = sa.table(
    "users", sa.column("id", sa.String), sa.column("username", sa.String), sa.column("email")
)


def upgrade() -> None:
    conn = op.get_bind()
    taken = {e for (e,) in conn.execute(sa.select(USERS.c.email).where(USERS.c.email.is_not(None)))}
    missing = conn.execute(
        sa.select(USERS.c.id, USERS.c.username).where(USERS.c.email.is_(None))
    ).all()
    for user_id, username in missing:
        email = f"{username}@localhost"  # as services.auth.placeholder_email
        if email in taken:  # someone chose that address: keep it unique
            email = f"{username}+{user_id}@localhost"
        taken.add(email)
        conn.execute(sa.update(USERS).where(USERS.c.id == user_id).values(email=email))


def downgrade() -> None:
    pass  # the placeholders are valid emails; nothing to undo
