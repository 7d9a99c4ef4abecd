"""Which database engine the tests' stores and daemons use, and fresh databases for them.

``JOBFERRY_TEST_DB=sqlite`` (the default) gives every store a SQLite file in its
data directory, as a user gets it. ``JOBFERRY_TEST_DB=postgres`` gives every store
its own fresh database on the PostgreSQL of ``tests.services.PG_URL`` instead
(``CREATE DATABASE jf_t_<pid>_<n> TEMPLATE template0``), dropped when the test
session ends. Every test that builds a store, a ``Core`` or a daemon asks here:
``database_url(data_dir)``, ``database_config(data_dir)`` or ``store_sql(...)``.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.services import PG_URL

#: Environment variable naming the engine: ``sqlite`` (default) or ``postgres``.
ENGINE_ENV = "JOBFERRY_TEST_DB"
ENGINES = ("sqlite", "postgres")
#: Prefix of the databases this run creates (per process, so parallel runs never collide).
DB_PREFIX = f"jf_t_{os.getpid()}_"

_counter = itertools.count(1)
_lock = threading.Lock()
_by_data_dir: dict[Path, str] = {}
_created: list[str] = []


def engine_name() -> str:
    """The engine this test run uses (``sqlite`` or ``postgres``)."""
    name = os.environ.get(ENGINE_ENV, "sqlite").strip().lower() or "sqlite"
    if name in ("pg", "postgresql"):
        name = "postgres"
    if name not in ENGINES:
        raise ValueError(f"{ENGINE_ENV}={name!r}: expected one of {', '.join(ENGINES)}")
    return name


def on_postgres() -> bool:
    return engine_name() == "postgres"


def _admin_engine() -> Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    return create_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def fresh_pg_database() -> str:
    """The URL of a new, empty PostgreSQL database (dropped at the end of the session)."""
    with _lock:
        name = f"{DB_PREFIX}{next(_counter)}"
        _created.append(name)
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    finally:
        engine.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_created_databases() -> None:
    """Drop every database this process created (connections still open are cut)."""
    with _lock:
        names, _created[:] = list(_created), []
    if not names:
        return
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def database_url(data_dir: Path) -> str:
    """The store URL for the data directory *data_dir* (the same one on every call)."""
    if not on_postgres():
        return f"sqlite:///{data_dir.resolve() / 'jobferry.db'}"
    key = data_dir.resolve()
    with _lock:
        found = _by_data_dir.get(key)
    if found is None:
        found = fresh_pg_database()
        with _lock:
            found = _by_data_dir.setdefault(key, found)
    return found


def database_config(data_dir: Path) -> dict[str, Any]:
    """The ``database`` section of a config for *data_dir*: empty on SQLite (the default)."""
    return {"url": database_url(data_dir)} if on_postgres() else {}


def with_database(config: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """*config* (a config file's content) with the test run's database for *data_dir*."""
    section = database_config(data_dir)
    if not section:
        return config
    merged = dict(config)
    merged["database"] = {**section, **dict(config.get("database") or {})}
    return merged


def store_sql(url: str, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Run one SQL statement on the store at *url* (committed); return its rows as dicts."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params or {})
            return [dict(row._mapping) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()
