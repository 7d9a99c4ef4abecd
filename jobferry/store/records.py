"""The hot path: statements run for every submission or status poll.

They use Core statements rather than the ORM unit of work: a submission
inserting one job and its files that way costs half as much, which is what the
acceptance rate and the latency under polling are made of.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from jobferry.store.models import Base, JobState, new_id, utcnow
from jobferry.store.notify import notify_queued

JOBS = Base.metadata.tables["jobs"]
JOB_FILES = Base.metadata.tables["job_files"]
NODES = Base.metadata.tables["nodes"]
_DRAINED = select(NODES.c.drained).where(NODES.c.name == bindparam("node"))


def insert_job(
    session: Session, job: dict[str, Any], files: list[dict[str, Any]]
) -> dict[str, Any]:
    """Insert a job (queued unless *job* says otherwise) and its files; return the
    job's row as inserted. Missing columns get their model defaults.

    A job stored already claimed by a node (a direct start, ``daemon.dispatch``) is
    queued instead if an admin drained that node: the node may not have heard yet,
    and a drained node takes no new work. The returned row says which it was.
    """
    now = utcnow()
    values = {
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
    node = values.get("node")
    if values["state"] == JobState.RUNNING.value and node is not None:
        if session.connection().execute(_DRAINED, {"node": node}).scalar():
            values.update(state=JobState.QUEUED.value, node=None, attempt=0, started_at=None)
    session.execute(insert(JOBS), [values])
    if files:
        rows = [
            {"id": new_id(), "job_id": values["id"], "created_at": now, "param": None, **f}
            for f in files
        ]
        session.execute(insert(JOB_FILES), rows)
    if values["state"] == JobState.QUEUED.value:
        notify_queued(session)
    return values


class _Pending:
    """One submission's rows waiting in a ``GroupInserter``."""

    __slots__ = ("job", "files", "row", "error", "done")

    def __init__(self, job: dict[str, Any], files: list[dict[str, Any]]) -> None:
        self.job = job
        self.files = files
        self.row: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.done = False


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
    """

    def __init__(self, sessions: Any) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._leader = threading.Lock()
        self._queue: list[_Pending] = []

    def insert(self, job: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
        """Store *job* and its *files* (see ``insert_job``); return the job's row."""
        mine = _Pending(job, files)
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

    def _store(self, batch: list[_Pending]) -> None:
        try:
            with self._sessions.begin() as session:
                for pending in batch:
                    pending.row = insert_job(session, pending.job, pending.files)
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


def job_status_row(session: Session, job_id: str) -> JobStatus | None:
    """The few columns a status poll needs, or None for an unknown id."""
    row = session.execute(
        select(JOBS.c.state, JOBS.c.exit_code, JOBS.c.state_reason, JOBS.c.user_id).where(
            JOBS.c.id == job_id
        )
    ).first()
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
