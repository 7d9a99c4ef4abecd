"""Store fixtures shared by the unit tests: a migrated store on the run's engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from jobferry.store.engine import make_engine, make_session_factory, upgrade_schema
from jobferry.store.models import User
from tests.db import database_url


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated database (a SQLite file, or a fresh PostgreSQL database)."""
    eng = make_engine(database_url(tmp_path / "store"))
    upgrade_schema(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def user_id(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        user = User(username="alice")
        session.add(user)
        session.flush()
        return user.id
