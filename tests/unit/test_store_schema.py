"""The SQL store on the test run's engine: migrations and schema checks.

SQLite files by default; fresh PostgreSQL databases with JOBFERRY_TEST_DB=postgres
(tests.db). Tests named ``..._on_postgres_...`` always need PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from jobferry.errors import SchemaOutOfDateError
from jobferry.store.engine import (
    check_schema,
    current_revision,
    head_revision,
    is_empty,
    make_engine,
    upgrade_schema,
)
from jobferry.store.models import Base
from tests.unit.store_helpers import store_url

# --- schema ---------------------------------------------------------------------------------


def _schema(engine: Engine) -> dict[str, Any]:
    """Everything the inspector reports about each table, in a comparable form."""
    insp = inspect(engine)
    tables: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if table == "alembic_version":
            continue
        tables[table] = {
            # Sorted: a column added by a later migration comes last, which is fine.
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in insp.get_columns(table)
            ),
            "pk": insp.get_pk_constraint(table),
            "fks": sorted(
                (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"], fk["options"])
                for fk in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table)
            ),
            "uniques": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
        }
    return tables


def test_migrations__upgrade_head_matches_the_models(tmp_path: Path) -> None:
    migrated = make_engine(store_url(tmp_path, "migrated"))
    created = make_engine(store_url(tmp_path, "created"))
    try:
        assert upgrade_schema(migrated) == (None, head_revision())
        Base.metadata.create_all(created)
        with migrated.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diffs = compare_metadata(context, Base.metadata)
        # Alembic cannot compare an index with an expression (ix_jobs_claim's
        # "priority DESC") against SQLite's reflection, so it always reports it; the
        # inspector comparison below and the SQL check that follows cover it.
        expression_indexes = {"ix_jobs_claim"}
        diffs = [
            d
            for d in diffs
            if not (d[0] in ("add_index", "remove_index") and d[1].name in expression_indexes)
        ]
        assert diffs == []
        assert _schema(migrated) == _schema(created)
        for engine in (migrated, created):
            with engine.connect() as conn:
                sql = conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_claim'"
                    if engine.dialect.name == "postgresql"
                    else "SELECT sql FROM sqlite_master WHERE name = 'ix_jobs_claim'"
                ).scalar_one()
            assert "priority DESC" in sql
        assert set(_schema(migrated)) == set(Base.metadata.tables)
    finally:
        migrated.dispose()
        created.dispose()


def test_upgrade_schema__is_idempotent_at_head(engine: Engine) -> None:
    assert upgrade_schema(engine) == (head_revision(), head_revision())
    assert current_revision(engine) == head_revision()


def test_check_schema__initialises_an_empty_database(tmp_path: Path) -> None:
    eng = make_engine(store_url(tmp_path, "sub/fresh"))
    try:
        assert is_empty(eng)
        check_schema(eng)
        assert current_revision(eng) == head_revision()
        assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
        check_schema(eng)  # at head: nothing to do, no error
    finally:
        eng.dispose()


def test_check_schema__without_initialise_refuses_an_empty_database(tmp_path: Path) -> None:
    eng = make_engine(store_url(tmp_path, "fresh"))
    try:
        with pytest.raises(SchemaOutOfDateError, match="jobferry db upgrade"):
            check_schema(eng, initialize_empty=False)
    finally:
        eng.dispose()


@pytest.mark.parametrize(
    "tamper",
    [
        "DELETE FROM alembic_version",
        "DROP TABLE alembic_version",
        "UPDATE alembic_version SET version_num = 'f00dfeed'",
    ],
    ids=["no-revision", "no-version-table", "unknown-revision"],
)
def test_check_schema__refuses_a_database_not_at_head(engine: Engine, tamper: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(tamper))
    with pytest.raises(SchemaOutOfDateError) as caught:
        check_schema(engine)
    assert "jobferry db upgrade" in caught.value.message
    assert head_revision() in caught.value.message
    assert "\n" not in caught.value.message


def test_check_schema__behind_database_is_fixed_by_upgrade(tmp_path: Path) -> None:
    """A store created before the first migration: only an empty alembic_version table."""
    eng = make_engine(store_url(tmp_path, "old"))
    try:
        with eng.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        with pytest.raises(SchemaOutOfDateError, match="revision none"):
            check_schema(eng)
        assert upgrade_schema(eng) == (None, head_revision())
        check_schema(eng, initialize_empty=False)
    finally:
        eng.dispose()


def test_upgrade_schema__unknown_revision_is_a_one_line_schema_error(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaOutOfDateError) as caught:
        upgrade_schema(engine)
    assert "f00dfeed" in caught.value.message and "\n" not in caught.value.message
