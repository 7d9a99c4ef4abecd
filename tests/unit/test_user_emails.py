"""Every user has an email (Galaxy's clients expect a string): the 0007 migration fills
the rows of users created without one, and new users get a stable placeholder."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import text

from jobferry.store.engine import _alembic_config, make_engine, upgrade_schema
from tests.db import database_url

INSERT = text(
    "INSERT INTO users (id, username, email, is_admin, is_active, created_at) "
    "VALUES (:id, :name, :email, false, true, '2026-01-01 00:00:00')"
)


def test_migration_0007__users_without_email_get_name_at_localhost(tmp_path: Path) -> None:
    """Guards: rows made before emails were required kept NULL, answered as "email": null."""
    engine = make_engine(database_url(tmp_path / "store"))
    try:
        command.upgrade(_alembic_config(engine), "0006")
        with engine.begin() as conn:
            for uid, name, email in [
                ("a" * 16, "alice", None),
                ("b" * 16, "bob", "bob@example.org"),
                ("c" * 16, "carol", None),
                ("d" * 16, "dave", "carol@localhost"),  # carol's placeholder is taken
            ]:
                conn.execute(INSERT, {"id": uid, "name": name, "email": email})
        upgrade_schema(engine)
        with engine.connect() as conn:
            emails = dict(conn.execute(text("SELECT username, email FROM users")).all())
        assert emails == {
            "alice": "alice@localhost",
            "bob": "bob@example.org",
            "carol": f"carol+{'c' * 16}@localhost",
            "dave": "carol@localhost",
        }
    finally:
        engine.dispose()
