"""Engine and session factory, and the schema's revision (Alembic).

Two engines are supported: SQLite (embedded, the default) and PostgreSQL
through psycopg 3. SQLite gets WAL journaling, a busy timeout and foreign keys
on every connection. PostgreSQL gets a pool that pings a connection idle for
more than ``PING_IDLE_S`` when it is checked out (``_ping_if_idle``), so
connections that died with a server restart are replaced instead of failing a
request; one reused within that time is not pinged (a round trip per unit of
work saved under load): a server lost meanwhile fails the unit of work in
hand, which invalidates the whole pool, as it does for any unit in flight. A lost
or unreachable database surfaces as ``StoreUnavailableError`` from the unit of
work (``SessionFactory.begin``), which the API answers with 503; so does any
other error that means "try later" (SQLite busy or locked, an I/O error), and a
full disk (SQLite "database or disk is full", PostgreSQL disk_full) surfaces as
``StoreFullError``, answered 507. Both are a store being unavailable, never a
fault of what was asked: the job-end recorder retries them until they pass.

The schema is owned by Alembic: ``upgrade_schema`` brings a database to head,
``check_schema`` refuses an out-of-date one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import SingletonThreadPool

from jobferry.errors import (
    SchemaOutOfDateError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    means_no_space,
)

logger = logging.getLogger(__name__)

#: What a unit of work yields: an ORM ``Session`` or a Core ``Connection``.
_Unit = TypeVar("_Unit", Session, Connection)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


#: Seconds a new PostgreSQL connection may take before the store counts as unreachable.
PG_CONNECT_TIMEOUT_S = 5
#: Seconds a unit of work waits for a pooled connection before giving up (503).
POOL_TIMEOUT_S = 10
#: Seconds a pooled PostgreSQL connection may rest before its next checkout pings it.
PING_IDLE_S = 1.0


def normalize_url(url: str) -> str:
    """*url* with PostgreSQL URLs pointed at psycopg 3 (``postgres://``, ``postgresql://``)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def display_url(url: str) -> str:
    """*url* as logs and the CLI may show it: normalised, any password masked."""
    url = normalize_url(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing secret
        return url.split("://", 1)[0] + "://..."


def make_engine(url: str, pool_size: int = 4) -> Engine:
    """Create the engine for *url* (SQLite or PostgreSQL), tuned for a daemon."""
    url = normalize_url(url)
    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": pool_size}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
            Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs["pool_timeout"] = POOL_TIMEOUT_S
        if url.startswith("postgresql"):
            kwargs["connect_args"] = {
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "jobferry",
            }
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    else:
        _ping_if_idle(engine)
    return engine


def _ping_if_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout if it rested over ``PING_IDLE_S`` (else
    it was in use a moment ago); a failed ping makes the pool replace it (SQLAlchemy
    retries the checkout on ``DisconnectionError``)."""
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _rested_from(dbapi_conn: Any, record: Any) -> None:
        record.info["jobferry_checkin"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("jobferry_checkin")
        if since is not None and time.monotonic() - since <= PING_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def dialect_name(bind: Engine | Session) -> str:
    """``"sqlite"`` or ``"postgresql"``: the engine behind *bind* (an engine or a session)."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return str(engine.dialect.name)


def is_postgres(bind: Engine | Session) -> bool:
    """True when *bind* (an engine or a session) talks to PostgreSQL, else it is SQLite."""
    return dialect_name(bind) == "postgresql"


def is_connection_error(exc: BaseException) -> bool:
    """True when *exc* says the database cannot be reached (rather than refused a statement).

    A dropped or refused connection, a server shutting down, an exhausted pool: the
    same request can succeed later. SQLite's own errors (locked, disk full) are not
    counted: they are not about reaching a server.
    """
    if isinstance(exc, PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc.orig, psycopg.OperationalError | psycopg.InterfaceError)


#: SQLite primary result codes that mean "try later": busy, locked, an I/O error
#: (often a full or failing disk underneath), full, cannot open (no space for the
#: shared-memory file), a WAL locking protocol error.
SQLITE_TRY_LATER = frozenset({5, 6, 10, 13, 14, 15})


def is_try_later_error(exc: BaseException) -> bool:
    """True when the same unit of work may succeed later: the database cannot be
    reached (``is_connection_error``), or it cannot take the write now (SQLite busy,
    locked, out of disk, an I/O error; PostgreSQL out of disk, memory or connections).
    Never a constraint violation or a bad statement: retrying those fails again."""
    if is_connection_error(exc) or means_no_space(exc):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in SQLITE_TRY_LATER
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("53")


def store_unavailable(exc: BaseException) -> StoreUnavailableError:
    """The project error for a "try later" failure *exc* (see ``is_try_later_error``).

    Its message is what a client may see; the driver's words (hosts, ports) go to
    ``details["reason"]``, for logs only. A full disk gives ``StoreFullError`` (507).
    """
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    if means_no_space(exc):
        return StoreFullError(reason=reason)
    if is_connection_error(exc):
        message = "The database cannot be reached right now; try again shortly."
    else:
        message = "The database cannot take this now; try again shortly."
    return StoreUnavailableError(message, reason=reason)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: Milliseconds an inline read (on the event loop) waits for a busy SQLite database.
INLINE_BUSY_TIMEOUT_MS = 50


def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={INLINE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _inline_unavailable(exc: BaseException) -> StoreUnavailableError:
    """What an inline read's failure raises: its caller reads through a worker instead."""
    return StoreUnavailableError("The store is busy; try again shortly.", reason=str(exc))


class SessionFactory:
    """Opens units of work (``with factory.begin() as session:``).

    On SQLite they run one at a time per process: SQLite has a single writer,
    and threads that collide on its lock back off by sleeping (1, 2, 5, 10 ms
    ...), which costs far more than queueing on a lock here. The lock is
    re-entrant so a nested unit of work in the same thread cannot deadlock on it.
    On PostgreSQL units of work run concurrently.

    A unit of work that fails because the database cannot be reached (PostgreSQL
    down or restarting), is busy, or has no disk space left raises
    ``StoreUnavailableError`` (``StoreFullError`` for the disk); its transaction was
    rolled back, so nothing of it was stored and the caller may retry it whole.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._maker = sessionmaker(engine, expire_on_commit=False)
        self._lock = threading.RLock() if self.dialect == "sqlite" else None
        self._inline: Engine | None = None
        self._inline_lock = threading.Lock()
        self._inline_local = threading.local()

    @property
    def reads_inline(self) -> bool:
        """Whether ``read_inline`` may be used: a file SQLite database, whose reads
        (WAL: never waiting for the writer) cost less than a hop to a worker thread.
        Never PostgreSQL: a read there is a network round trip, and waits out outages."""
        if self.dialect != "sqlite":
            return False
        database = self.engine.url.database
        return bool(database) and database != ":memory:" and "mode=memory" not in str(database)

    def begin(self) -> AbstractContextManager[Session]:
        """A unit of work on an ORM session (see the class docstring)."""
        return self._unit_of_work(self._maker.begin())

    def transaction(self) -> AbstractContextManager[Connection]:
        """A unit of work on a bare Core connection, for the hot path's statements
        (``store.records``): no ORM session, identity map or flush, which is most of
        what a small transaction costs. The same rules as ``begin`` otherwise: one at
        a time on SQLite, ``StoreUnavailableError``/``StoreFullError`` on failure."""
        return self._unit_of_work(self.engine.begin())

    def statement(self) -> AbstractContextManager[Connection]:
        """A unit of work that is one statement, atomic by itself, on an autocommit
        Core connection: on PostgreSQL no BEGIN and COMMIT around it, a round trip
        each (``store.queued_insert``). The same failures as ``transaction``."""
        return self._unit_of_work(self._autocommit())

    @contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    @contextmanager
    def _unit_of_work(self, opener: AbstractContextManager[_Unit]) -> Iterator[_Unit]:
        """``opener`` (not yet entered: both openers do nothing before ``__enter__``)
        under the SQLite lock, its try-later failures as ``StoreUnavailableError``."""
        try:
            if self._lock is None:
                with opener as unit:
                    yield unit
                return
            with self._lock, opener as unit:
                yield unit
        except (DBAPIError, PoolTimeoutError) as exc:
            if is_try_later_error(exc):
                raise store_unavailable(exc) from exc
            raise

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A bare Core connection for reads only (a status poll). It does not queue on
        the SQLite lock: in WAL mode readers never wait for the writer, so a poll is not
        held up behind a batch of inserts. On PostgreSQL it runs in autocommit: a
        single SELECT needs no BEGIN, nor a ROLLBACK when the connection goes back to
        the pool (two round trips of a poll's four). Errors as in ``begin``."""
        try:
            with self.engine.connect() as connection:
                if self._lock is None:
                    connection.execution_options(isolation_level="AUTOCOMMIT")
                yield connection
        except (DBAPIError, PoolTimeoutError) as exc:
            if is_try_later_error(exc):
                raise store_unavailable(exc) from exc
            raise

    @contextmanager
    def read_inline(self) -> Iterator[Any]:
        """The calling thread's own DBAPI (sqlite3) connection, for a read on the event
        loop: SQLite only (``reads_inline``). It is opened once per thread and kept,
        outside the pool, so a read never waits for a connection the worker threads
        hold, nor for the writer lock, and costs what SQLite costs (a status poll by
        primary key: ~6 us, against ~70 us through a pooled SQLAlchemy connection).
        Busy for more than ``INLINE_BUSY_TIMEOUT_MS`` (rare in WAL), or any other
        driver error: ``StoreUnavailableError``, and the connection is dropped; the
        caller then reads through a worker thread, where errors are mapped as usual."""
        if not self.reads_inline:
            raise RuntimeError("read_inline is for SQLite stores only (see reads_inline)")
        driver_error: Any = self.engine.dialect.dbapi.Error  # type: ignore[union-attr]
        held = getattr(self._inline_local, "held", None)
        if held is None:
            engine = self._inline_engine()
            try:
                held = self._inline_local.held = engine.raw_connection()
            except (DBAPIError, PoolTimeoutError, driver_error) as exc:
                raise _inline_unavailable(exc) from exc
        try:
            yield held.driver_connection
        except driver_error as exc:
            self._inline_local.held = None
            held.invalidate()
            raise _inline_unavailable(exc) from exc

    def _inline_engine(self) -> Engine:
        with self._inline_lock:
            if self._inline is None:
                self._inline = create_engine(
                    self.engine.url,
                    poolclass=SingletonThreadPool,
                    connect_args={"check_same_thread": False, "timeout": 0.05},
                )
                event.listen(self._inline, "connect", _sqlite_on_connect)
                # Never wait long on the loop: busy (rare in WAL) -> StoreUnavailable,
                # and the caller reads through a worker thread instead.
                event.listen(self._inline, "connect", _short_busy_timeout)
            return self._inline

    def dispose(self) -> None:
        """Close the inline readers' connections (the main engine is its owner's)."""
        if self._inline is not None:
            self._inline.dispose()


def make_session_factory(engine: Engine) -> SessionFactory:
    return SessionFactory(engine)


def _alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def _script_directory() -> ScriptDirectory:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg)


def head_revision() -> str:
    head = _script_directory().get_current_head()
    assert head is not None
    return head


def is_known_revision(revision: str) -> bool:
    """True when *revision* is one of this jobferry's migrations."""
    return any(script.revision == revision for script in _script_directory().walk_revisions())


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_empty(engine: Engine) -> bool:
    """True when the database holds no tables at all (a fresh install)."""
    return not inspect(engine).get_table_names()


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to head; return (revision before, revision after)."""
    before = current_revision(engine)
    if before is not None and not is_known_revision(before):
        raise SchemaOutOfDateError(_unknown_revision(before))
    try:
        command.upgrade(_alembic_config(engine), "head")
    except CommandError as exc:
        raise SchemaOutOfDateError(f"cannot migrate the database: {exc}") from exc
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise StoreError(f"migrating the database failed: {reason}") from exc
    return before, head_revision()


def _unknown_revision(current: str) -> str:
    return (
        f"the database schema is at revision {current}, which this jobferry does not know "
        f"(it was migrated by a newer version?): install that version, then run "
        f"'jobferry db upgrade' (head here is {head_revision()})"
    )


def check_schema(engine: Engine, *, initialize_empty: bool = True) -> None:
    """Refuse a database whose schema is not at head.

    An empty database is initialised when *initialize_empty* (first start).
    Raises SchemaOutOfDateError naming the command that fixes it.
    """
    if initialize_empty and is_empty(engine):
        upgrade_schema(engine)
        logger.info("initialised a new database at schema revision %s", head_revision())
        return
    current = current_revision(engine)
    head = head_revision()
    if current is not None and not is_known_revision(current):
        raise SchemaOutOfDateError(_unknown_revision(current))
    if current != head:
        raise SchemaOutOfDateError(
            f"the database schema is at revision {current or 'none'} but this jobferry needs "
            f"{head}: run 'jobferry db upgrade' (with the same --config/--data-dir)"
        )
