"""The hot path: statements run for every submission or status poll.

They use Core statements rather than the ORM unit of work: a submission
inserting one job and its files that way costs half as much, which is what the
acceptance rate and the latency under polling are made of. The statements are
built once, at import (building one per call and computing its cache key cost
more than running it on SQLite), and run on a bare Core connection where the
caller has one (``SessionFactory.transaction``): no session, no identity map.
The few that every job's life runs in the worker threads (``STATE``, ``DRAINED``,
``INSERT_OUTPUT``, ``running_per_destination``, and ``transitions``' claim and end)
go one step further: ``store.dbapi`` runs them on the transaction's DB-API cursor.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from concurrent.futures import Future as ThreadFuture
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.orm import Session

from jobferry.store.dbapi import RawStatement
from jobferry.store.models import Base, JobState, new_id, utcnow
from jobferry.store.notify import notify_queued
from jobferry.store.queued_insert import insert_queued

JOBS = Base.metadata.tables["jobs"]
JOB_FILES = Base.metadata.tables["job_files"]
NODES = Base.metadata.tables["nodes"]
_DRAINED = select(NODES.c.drained).where(NODES.c.name == bindparam("node"))
#: Whether a node is drained (parameter ``node``), on the DB-API cursor: read by every claim.
DRAINED = RawStatement(_DRAINED)
#: A job's state (parameter ``job_id``), on the DB-API cursor: read at every job's end.
STATE = RawStatement(select(JOBS.c.state).where(JOBS.c.id == bindparam("job_id")))
#: A job's output file (parameters by column name), on the DB-API cursor: a job's end.
INSERT_OUTPUT = RawStatement(
    insert(JOB_FILES).values(
        {
            name: bindparam(name)
            for name in ("id", "job_id", "kind", "name", "param", "size", "sha256", "created_at")
        }
    )
)


def in_fixed(column: Any, values: Sequence[str]) -> Any:
    """``column IN (...)`` for values fixed when a statement is built once (states, a
    claim's destinations): one plain bound parameter per value, not SQLAlchemy's
    "expanding" parameter, which is re-rendered into the SQL at every execution
    (a sixth of what a hot statement's execution costs). Empty: false, which is what
    an empty ``IN`` means (and needs no expanding parameter: ``store.dbapi``)."""
    if not values:
        return false()
    return column.in_([literal(value, column.type) for value in values])


#: The states of an attempt that holds its node's resources (running or being cancelled).
HOLDING = (JobState.RUNNING.value, JobState.DELETING.value)
_INSERT_JOB = insert(JOBS)
_INSERT_FILE = insert(JOB_FILES)
_STATUS = select(JOBS.c.state, JOBS.c.exit_code, JOBS.c.state_reason, JOBS.c.user_id).where(
    JOBS.c.id == bindparam("job_id")
)

#: ``_STATUS`` as SQLite's SQL, for ``job_status_inline`` (its one parameter: the id).
_STATUS_COMPILED = _STATUS.compile(dialect=SQLiteDialect_pysqlite())
assert _STATUS_COMPILED.positiontup == ["job_id"], _STATUS_COMPILED.positiontup
_STATUS_SQLITE = str(_STATUS_COMPILED)

#: A unit of work: an ORM session, or a bare Core connection (cheaper, same statements).
Bind = Session | Connection


def _connection(bind: Bind) -> Connection:
    return bind.connection() if isinstance(bind, Session) else bind


def insert_job(bind: Bind, job: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    """Insert a job (queued unless *job* says otherwise) and its files; return the
    job's row as inserted. Missing columns get their model defaults.

    A job stored already claimed by a node (a direct start, ``daemon.dispatch``) is
    queued instead if an admin drained that node: the node may not have heard yet,
    and a drained node takes no new work. The returned row says which it was.
    """
    return insert_jobs(bind, [(job, files)])[0]


def job_values(job: dict[str, Any], now: Any) -> dict[str, Any]:
    """*job*'s row as stored: the columns it does not give get their defaults (queued)."""
    return {
        "state": JobState.QUEUED.value,
        "params": {},
        "priority": 0,
        "runner": "local",
        "destination": "local",
        "attempt": 0,
        "cores": 1,
        "gpus": 0,
        "created_at": now,
        "updated_at": now,
        **job,
    }


#: Rows of another table that belong to a job, stored in the job's transaction (after
#: it: their foreign key names it): ``(table, row)``, e.g. a TES task's document.
Attached = tuple[Table, dict[str, Any]]


def insert_jobs(
    bind: Bind,
    submissions: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]],
    attached: Sequence[Sequence[Attached]] = (),
) -> list[dict[str, Any]]:
    """``insert_job`` for several jobs in one transaction, with one multi-row statement
    per table (rows of the same columns go together): a statement's own cost in
    SQLAlchemy is several times the row's, so a batch of concurrent submissions
    (``GroupInserter``) costs little more than one. *attached*: per submission, rows
    of other tables stored after the jobs (rare: one statement each). Returns the
    rows in order."""
    now = utcnow()
    connection = _connection(bind)
    drained: dict[str, bool] = {}
    jobs: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    file_rows: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    out: list[dict[str, Any]] = []
    queued = False
    for job, files in submissions:
        values = job_values(job, now)
        node = values.get("node")
        if values["state"] == JobState.RUNNING.value and node is not None:
            if node not in drained:
                drained[node] = bool(connection.execute(_DRAINED, {"node": node}).scalar())
            if drained[node]:
                values.update(state=JobState.QUEUED.value, node=None, attempt=0, started_at=None)
        queued = queued or values["state"] == JobState.QUEUED.value
        jobs.setdefault(tuple(values), []).append(values)
        for f in files:
            row = {"id": new_id(), "job_id": values["id"], "created_at": now, "param": None, **f}
            file_rows.setdefault(tuple(row), []).append(row)
        out.append(values)
    for rows in jobs.values():
        connection.execute(_INSERT_JOB, rows)
    for rows in file_rows.values():  # after the jobs they belong to (foreign key)
        connection.execute(_INSERT_FILE, rows)
    for extra in attached:
        for table, row in extra:
            connection.execute(insert(table), [row])
    if queued:
        notify_queued(connection)
    return out


class _Pending:
    """One submission's rows waiting in a ``GroupInserter``."""

    __slots__ = ("job", "files", "attached", "row", "error", "done", "future")

    def __init__(
        self,
        job: dict[str, Any],
        files: list[dict[str, Any]],
        attached: Sequence[Attached] = (),
    ) -> None:
        self.job = job
        self.files = files
        self.attached = attached
        self.row: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.done = False
        #: Where an event-loop caller waits (``insert_async``).
        self.future: asyncio.Future[dict[str, Any]] | None = None


class GroupInserter:
    """Stores concurrent submissions in shared transactions (group commit).

    Every thread that submits queues its rows, then takes turns at being the
    leader: the leader stores everything queued so far in one transaction, and
    the threads whose rows went in with it return without a transaction of their
    own. Alone, a submission is its own batch (no waiting); under load, batches
    form while the previous transaction commits, which is where a submission's
    cost went (each commit writes every index page it touched to the WAL).

    If a shared transaction fails, each of its submissions is retried alone, so
    one bad row never fails another; a submission whose own transaction fails
    gets that error.

    ``insert_async`` is the same for callers on the event loop: the rows queued
    there go to *executor* together, one worker-thread hop and one transaction per
    batch (the next batch forms while one commits), and each caller is answered
    once its row is committed.
    """

    def __init__(self, sessions: Any, executor: Executor | None = None) -> None:
        self._sessions = sessions
        self._executor = executor
        self._lock = threading.Lock()
        self._leader = threading.Lock()
        self._queue: list[_Pending] = []
        self._loop_queue: list[_Pending] = []  # only touched on the event loop
        self._flushing = False

    def insert(
        self,
        job: dict[str, Any],
        files: list[dict[str, Any]],
        attached: Sequence[Attached] = (),
    ) -> dict[str, Any]:
        """Store *job*, its *files* and its *attached* rows (see ``insert_jobs``) in one
        transaction; return the job's row."""
        mine = _Pending(job, files, attached)
        with self._lock:
            self._queue.append(mine)
        with self._leader:
            if not mine.done:
                with self._lock:
                    batch, self._queue = self._queue, []
                self._store(batch)
        if mine.error is not None:
            raise mine.error
        return mine.row

    async def insert_async(
        self, job: dict[str, Any], files: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """``insert`` from the event loop, without a worker-thread hop of its own."""
        if self._executor is None:
            raise RuntimeError("GroupInserter.insert_async needs an executor")
        loop = asyncio.get_running_loop()
        mine = _Pending(job, files)
        mine.future = loop.create_future()
        self._loop_queue.append(mine)
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush, loop)
        return await mine.future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send what the loop queued to a worker thread as one batch (on the loop)."""
        batch, self._loop_queue = self._loop_queue, []
        assert self._executor is not None
        try:
            done = self._executor.submit(self._store, batch)
        except BaseException as exc:  # the executor is shut down: the daemon stops
            self._answer(loop, batch, exc)
            return
        done.add_done_callback(lambda f: self._stored(loop, batch, f))

    def _stored(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], done: ThreadFuture[None]
    ) -> None:
        """In the worker thread, after the batch's transaction: answer on the loop."""
        try:
            loop.call_soon_threadsafe(self._answer, loop, batch, done.exception())
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _answer(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], failed: BaseException | None
    ) -> None:
        """Resolve the batch's callers (on the loop), then send the next batch."""
        for pending in batch:
            future = pending.future
            if future is None or future.done():  # the caller went away
                continue
            error = failed or pending.error
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(pending.row)
        if self._loop_queue:
            loop.call_soon(self._flush, loop)
        else:
            self._flushing = False

    def _store_plain(self, batch: list[_Pending]) -> list[dict[str, Any]] | None:
        """A batch of queued jobs alone (no files, no attached rows) in one statement
        where the store allows it (``store.queued_insert``); None where it does not."""
        if self._sessions.dialect != "postgresql":
            return None
        if any(p.files or p.attached for p in batch):
            return None
        now = utcnow()
        rows = [job_values(p.job, now) for p in batch]
        return rows if insert_queued(self._sessions, rows) else None

    def _store(self, batch: list[_Pending]) -> None:
        try:
            rows = self._store_plain(batch)
            if rows is None:
                with self._sessions.transaction() as connection:
                    rows = insert_jobs(
                        connection, [(p.job, p.files) for p in batch], [p.attached for p in batch]
                    )
            for pending, row in zip(batch, rows, strict=True):
                pending.row = row
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done = True
                return
            for pending in batch:
                self._store([pending])
            return
        for pending in batch:
            pending.done = True


class JobStatus(NamedTuple):
    state: str
    exit_code: int | None
    state_reason: str | None
    user_id: str


class JobEnd(NamedTuple):
    """How a job ended, as its recorder wrote it (terminal: it never changes again)."""

    state: str
    exit_code: int | None
    state_reason: str | None


def job_status_row(bind: Bind, job_id: str) -> JobStatus | None:
    """The few columns a status poll needs, or None for an unknown id."""
    row = _connection(bind).execute(_STATUS, {"job_id": job_id}).first()
    return None if row is None else JobStatus(*row)


def job_status_inline(dbapi_connection: Any, job_id: str) -> JobStatus | None:
    """``job_status_row`` on a DBAPI sqlite3 connection (``SessionFactory.read_inline``):
    the statement SQLAlchemy compiled once, run by the driver itself. The columns are
    text and integers, which SQLite returns as they are (no result processing)."""
    row = dbapi_connection.execute(_STATUS_SQLITE, (job_id,)).fetchone()
    return None if row is None else JobStatus(*row)


def replace_output_file(session: Session, job_id: str, name: str, size: int, sha256: str) -> None:
    """Record (or re-record) one output file of a job, e.g. uploaded after it ended."""
    session.execute(
        delete(JOB_FILES).where(
            JOB_FILES.c.job_id == job_id, JOB_FILES.c.kind == "output", JOB_FILES.c.name == name
        )
    )
    session.execute(
        insert(JOB_FILES),
        [
            {
                "id": new_id(),
                "job_id": job_id,
                "kind": "output",
                "name": name,
                "param": None,
                "size": size,
                "sha256": sha256,
                "created_at": utcnow(),
            }
        ],
    )


@functools.lru_cache(maxsize=64)
def _running_sql(destinations: tuple[str, ...]) -> RawStatement:
    """``running_per_destination``'s statement for one set of destinations, built once
    (a claim with ``max_concurrent`` limits runs it for every job)."""
    c = JOBS.c
    return RawStatement(
        select(c.destination, func.count())
        .where(in_fixed(c.destination, destinations), in_fixed(c.state, HOLDING))
        .group_by(c.destination)
    )


def running_per_destination(
    session: Session | Connection, destinations: Iterable[str]
) -> dict[str, int]:
    """Jobs running (or being cancelled) now, by destination, on every node."""
    conn = session if isinstance(session, Connection) else session.connection()
    rows = _running_sql(tuple(sorted(destinations))).all(conn, {})
    return {name: int(count) for name, count in rows}
