"""The claim's order on either engine, against a model of it: best priority, then the
user with the fewest jobs running, then the oldest (SQLite reads it with
``store.fair_claim``'s walk, PostgreSQL with one statement)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from jobferry.store.engine import SessionFactory
from jobferry.store.models import Job, JobState, User
from jobferry.store.transitions import NodeResources, claim_next_job

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DESTINATIONS = ["local", "big", "elsewhere"]
CLAIMED = ["local", "big"]  # this node's destinations
FIT = NodeResources(4, 1000, 0, 4, 1000, 0)  # all free: no head job is reserved


@dataclass
class Queued:
    id: str
    user: str
    destination: str
    priority: int
    created_at: datetime
    cores: int
    state: str


def expected_next(jobs: list[Queued]) -> Queued | None:
    """The model: among queued jobs of CLAIMED that could ever fit, best priority, then
    the user with the fewest running jobs, then the oldest (then the id)."""
    running: dict[str, int] = {}
    for job in jobs:
        if job.state == JobState.RUNNING.value:
            running[job.user] = running.get(job.user, 0) + 1
    queued = [
        j
        for j in jobs
        if j.state == JobState.QUEUED.value
        and j.destination in CLAIMED
        and j.cores <= FIT.total_cores
    ]
    if not queued:
        return None
    return min(queued, key=lambda j: (-j.priority, running.get(j.user, 0), j.created_at, j.id))


@pytest.mark.parametrize("seed", range(6))
def test_claims__follow_priority_then_fair_share_then_age_for_any_queue(
    sessions: SessionFactory, seed: int
) -> None:
    rng = random.Random(seed)
    with sessions.begin() as session:
        users = [User(username=f"user{n}") for n in range(rng.randint(1, 4))]
        session.add_all(users)
        session.flush()
        user_ids = [u.id for u in users]
    jobs: list[Queued] = []
    with sessions.begin() as session:
        for n in range(rng.randint(20, 60)):
            state = JobState.RUNNING.value if rng.random() < 0.15 else JobState.QUEUED.value
            row = Job(
                uuid=str(uuid.uuid4()),
                user_id=rng.choice(user_ids),
                name="j",
                argv=["true"],
                job_dir="/nonexistent",
                state=state,
                destination=rng.choice(DESTINATIONS),
                runner="local",
                cores=rng.choice([1, 1, 1, 2, 8]),  # 8: never fits this node
                gpus=0,
                priority=rng.choice([0, 0, 1, 2]),
                created_at=T0 + timedelta(seconds=rng.randint(0, 5) * 10 + n % 3),
            )
            session.add(row)
            session.flush()
            jobs.append(
                Queued(
                    row.id,
                    row.user_id,
                    row.destination,
                    row.priority,
                    row.created_at,
                    row.cores,
                    state,
                )
            )
    claimable = {
        j.id
        for j in jobs
        if j.state == JobState.QUEUED.value
        and j.destination in CLAIMED
        and j.cores <= FIT.total_cores
    }
    sqlite = sessions.dialect == "sqlite"
    claimed: list[str] = []
    while True:
        want = expected_next(jobs)
        with sessions.begin() as session:
            got = claim_next_job(session, destinations=CLAIMED, node="n1", fit=FIT)
        if want is None:
            assert got.job is None and not got.held_back
            break
        assert got.job is not None, f"after {claimed}"
        assert got.job.id == want.id, f"claim {len(claimed) + 1} (after {claimed})"
        want.state = JobState.RUNNING.value
        claimed.append(want.id)
        left = expected_next(jobs) is not None
        # SQLite's walk says whether a job is left; PostgreSQL's claim does not (None).
        assert got.more is (left if sqlite else None)
        if rng.random() < 0.3:  # a running job ends now and then: fair share moves
            ending = rng.choice([j for j in jobs if j.state == JobState.RUNNING.value])
            ending.state = JobState.OK.value
            with sessions.begin() as session:
                found = session.get(Job, ending.id)
                assert found is not None
                found.state = JobState.OK.value
    assert sorted(claimed) == sorted(claimable)  # each once, and nothing else
