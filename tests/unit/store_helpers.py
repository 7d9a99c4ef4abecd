"""What the store test modules share: a store URL per test, and short ways to add, read,
claim and finish a job row."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from jobferry.store.models import Job, JobState
from jobferry.store.transitions import claim_queued_jobs, finish_job
from tests.db import database_url

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def unreachable_postgres_url() -> str:
    """A PostgreSQL URL on a local port nothing listens on (a store that is away)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/jobferry"


def store_url(tmp_path: Path, name: str) -> str:
    """A new, empty store named *name* for this test (a SQLite file or a PG database)."""
    return database_url(tmp_path / name)


def add_job(
    sessions: sessionmaker[Session],
    user_id: str,
    *,
    state: JobState = JobState.QUEUED,
    priority: int = 0,
    created_at: datetime = T0,
    runner: str = "local",
    attempt: int = 0,
    name: str = "job",
) -> str:
    with sessions.begin() as session:
        job = Job(
            uuid=str(uuid.uuid4()),
            user_id=user_id,
            name=name,
            argv=["python", "script.py"],
            job_dir="/nonexistent/job",
            state=state.value,
            priority=priority,
            created_at=created_at,
            runner=runner,
            attempt=attempt,
        )
        session.add(job)
        session.flush()
        return job.id


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def claim(sessions: sessionmaker[Session], limit: int, node: str = "node-a") -> list[Job]:
    with sessions.begin() as session:
        return list(claim_queued_jobs(session, runner="local", node=node, limit=limit))


def finish(
    sessions: sessionmaker[Session], job_id: str, attempt: int, state: JobState = JobState.OK
) -> None:
    with sessions.begin() as session:
        finish_job(
            session,
            job_id,
            attempt,
            state,
            reason=None,
            exit_code=0,
            finished_at=T0,
            metrics={"wall_s": 1.5},
        )
