"""Store errors that mean "try later" are the store being unavailable, and a full disk
answers 507 wherever it strikes (issue #10, items 1 and 6)."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from jobferry.api.base import galaxy_err_code, status_for
from jobferry.errors import (
    InsufficientStorageError,
    StoreFullError,
    StoreUnavailableError,
    no_space,
)
from jobferry.store.engine import SessionFactory, check_schema, make_engine

pytestmark = pytest.mark.engine_independent  # SQLite's own errors, on a SQLite file


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    check_schema(engine)
    yield engine
    engine.dispose()


def test_a_full_sqlite_store_is_store_full_answered_507(sqlite_engine: Engine) -> None:
    """Guards: "database or disk is full" escaped as a raw OperationalError: the API
    answered 500 and the job-end recorder gave up after four attempts."""
    sessions = SessionFactory(sqlite_engine)
    with pytest.raises(StoreFullError) as caught:
        with sessions.begin() as session:
            pages = session.execute(text("PRAGMA page_count")).scalar()
            session.execute(text(f"PRAGMA max_page_count = {pages}"))  # full from now on
            session.execute(text("CREATE TABLE filler (blob BLOB)"))
            session.execute(text("INSERT INTO filler VALUES (zeroblob(1000000))"))
    assert isinstance(caught.value, StoreUnavailableError)  # retried like an outage
    assert status_for(caught.value) == 507 and status_for(caught.value, galaxy=True) == 507
    assert galaxy_err_code(caught.value, 507) == 507001
    assert "full" in caught.value.details["reason"]
    assert caught.value.message == (
        "The daemon is out of disk space: try again once space has been freed."
    )


def test_a_locked_sqlite_store_is_store_unavailable_answered_503(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """Guards: "database is locked" (another process writing) escaped as a raw
    OperationalError: a 500, and a job end counted as failed rather than retried."""
    sessions = SessionFactory(sqlite_engine)
    with closing(sqlite3.connect(tmp_path / "store.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailableError) as caught:
            with sessions.begin() as session:
                session.execute(text("PRAGMA busy_timeout = 1"))
                session.execute(text("UPDATE nodes SET drained = 0"))
        other.execute("ROLLBACK")
    assert not isinstance(caught.value, StoreFullError)
    assert status_for(caught.value) == 503


def test_a_statement_error_is_not_try_later(sqlite_engine: Engine) -> None:
    """A bad statement fails again however often it is retried: it stays an error."""
    sessions = SessionFactory(sqlite_engine)
    with pytest.raises(Exception) as caught:
        with sessions.begin() as session:
            session.execute(text("SELECT * FROM no_such_table"))
    assert not isinstance(caught.value, StoreUnavailableError)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_no_space_os_errors_map_to_507(code: int) -> None:
    """Guards: an OSError ENOSPC/EDQUOT from any handler answered `500 internal_error`."""
    try:
        try:
            raise OSError(code, "No space left on device", "/data/tmp/upload")
        except OSError as exc:
            raise RuntimeError("writing the upload failed") from exc
    except RuntimeError as wrapped:
        found = no_space(wrapped)
    assert isinstance(found, InsufficientStorageError)
    assert status_for(found) == 507 and found.details == {"path": "/data/tmp/upload"}
    assert "out of disk space" in found.message
    assert no_space(OSError(errno.EACCES, "Permission denied")) is None
