"""Session-wide test setup: the database engine every store and daemon uses (tests.db)."""

from __future__ import annotations

import pytest

from tests.db import ENGINE_ENV, drop_created_databases, engine_name, on_postgres
from tests.services import PG_URL, available


def pytest_report_header(config: pytest.Config) -> str:
    where = f" at {PG_URL}" if on_postgres() else " (a file in each data dir)"
    return f"jobferry store engine: {engine_name()}{where} ({ENGINE_ENV})"


def pytest_sessionstart(session: pytest.Session) -> None:
    if on_postgres() and not available("postgres"):
        raise pytest.UsageError(
            f"{ENGINE_ENV}=postgres but PostgreSQL does not answer at {PG_URL} "
            "(scripts/services postgres starts it; JOBFERRY_TEST_PG_URL names another)"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_created_databases()  # also those PostgreSQL-only tests made on a SQLite run
