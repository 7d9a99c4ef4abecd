"""Nodes on the test run's engine: registration, heartbeat (database clock), drain, the
reaper's recovery of a dead node's jobs, and node/attempt fencing of a stale node."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from jobferry.config import parse_config
from jobferry.errors import AdminRequiredError, ConflictError, NotFoundError
from jobferry.runners.base import RunSpec, RunState, RunStatus
from jobferry.services.core import Core, Principal
from jobferry.services.execution import ClaimedJob, ExecutionService
from jobferry.services.nodes import NodeService, NodeUsage, read_db_now
from jobferry.store.engine import check_schema
from jobferry.store.models import Job, JobState, Node, User
from jobferry.store.records import insert_job
from tests.db import with_database

ADMIN = Principal("u1", "admin", True)
BOB = Principal("u2", "bob", False)


def make_core(data: Path, name: str, **extra: Any) -> Core:
    config = {
        "data_dir": str(data),
        "node": {
            "name": name,
            "cores": 4,
            "memory_mb": 1000,
            "gpus": 0,
            "heartbeat_s": 1,
            "dead_after_s": 3,
        },
        **extra,
    }
    return Core(parse_config(with_database(config, data)), node_name=name)


@pytest.fixture
def cores(tmp_path: Path) -> Iterator[tuple[Core, Core]]:
    data = tmp_path / "data"
    n1 = make_core(data, "n1", jobs={"max_attempts": 2})
    n1.ensure_dirs()
    check_schema(n1.engine)
    n2 = make_core(data, "n2", jobs={"max_attempts": 2})
    with n1.sessions.begin() as session:
        session.add(User(id="u1", username="admin", is_admin=True))
    yield n1, n2
    n1.close()
    n2.close()


def add_job(core: Core, *, node: str | None, attempt: int = 1, **values: Any) -> str:
    job_id = uuid.uuid4().hex[:16]
    row = {
        "id": job_id,
        "uuid": str(uuid.uuid4()),
        "user_id": "u1",
        "name": "j",
        "argv": ["true"],
        "job_dir": str(core.jobs_path / job_id),
        "state": JobState.RUNNING.value,
        "node": node,
        "attempt": attempt,
        **values,
    }
    with core.sessions.begin() as session:
        insert_job(session, row, [])
    return job_id


def job(core: Core, job_id: str) -> Job:
    with core.sessions.begin() as session:
        found = session.get(Job, job_id)
        assert found is not None
        session.expunge(found)
        return found


def age(core: Core, name: str, seconds: float) -> None:
    """Pretend *name*'s last heartbeat was *seconds* ago (by the database's clock)."""
    with core.sessions.begin() as session:
        then = read_db_now(session) - timedelta(seconds=seconds)
        session.execute(update(Node).where(Node.name == name).values(heartbeat_at=then))


def test_register__upserts_with_a_new_incarnation_and_keeps_the_drain_flag(
    cores: tuple[Core, Core],
) -> None:
    n1, _ = cores
    nodes = NodeService(n1)
    assert nodes.register(url="http://h:1") == 1
    nodes.set_drained(ADMIN, "n1", True)
    assert nodes.register(url="http://h:1") == 2
    shown = nodes.get(ADMIN, "n1")
    assert shown["drained"] is True and shown["state"] == "draining"
    assert shown["total"] == {"cores": 4, "memory_mb": 1000, "gpus": 0}
    assert shown["alive"] is True and 0 <= shown["heartbeat_age_s"] < 3
    nodes.stopped(2)
    assert nodes.get(ADMIN, "n1")["state"] == "stopped"


def test_heartbeat__database_clock_free_resources_drain_flag_and_superseded(
    cores: tuple[Core, Core],
) -> None:
    n1, _ = cores
    nodes = NodeService(n1)
    incarnation = nodes.register(url="u")
    age(n1, "n1", 100)
    assert nodes.get(ADMIN, "n1")["alive"] is False
    beat = nodes.heartbeat(incarnation, NodeUsage(1, 200, 0, 3))
    assert not beat.drained and not beat.was_dead and not beat.superseded
    shown = nodes.get(ADMIN, "n1")
    assert shown["alive"] is True and shown["heartbeat_age_s"] < 3
    assert shown["free"] == {"cores": 1, "memory_mb": 200, "gpus": 0}
    assert shown["running_jobs"] == 3
    nodes.set_drained(ADMIN, "n1", True)
    assert nodes.heartbeat(incarnation, NodeUsage(4, 1000, 0, 0)).drained
    nodes.set_drained(ADMIN, "n1", False)
    assert nodes.get(ADMIN, "n1")["state"] == "up"
    nodes.register(url="u")  # another daemon started with this name
    assert nodes.heartbeat(incarnation, NodeUsage(4, 1000, 0, 0)).superseded


def test_admin_only_and_unknown_node(cores: tuple[Core, Core]) -> None:
    n1, _ = cores
    nodes = NodeService(n1)
    nodes.register(url="u")
    with pytest.raises(AdminRequiredError):
        nodes.list_nodes(BOB)
    with pytest.raises(AdminRequiredError):
        nodes.set_drained(BOB, "n1", True)
    with pytest.raises(NotFoundError):
        nodes.get(ADMIN, "nope")
    with pytest.raises(NotFoundError):
        nodes.set_drained(ADMIN, "nope", True)


def test_drained_node_claims_nothing(cores: tuple[Core, Core]) -> None:
    n1, _ = cores
    NodeService(n1).register(url="u")
    queued = add_job(n1, node=None, attempt=0, state=JobState.QUEUED.value)
    execution = ExecutionService(n1, base_url="")
    NodeService(n1).set_drained(ADMIN, "n1", True)
    assert execution.claim_next(["local"], None).job is None
    NodeService(n1).set_drained(ADMIN, "n1", False)
    claimed = execution.claim_next(["local"], None).job
    assert isinstance(claimed, ClaimedJob) and claimed.job_id == queued
    assert claimed.node == "n1" and claimed.attempt == 1


def test_reaper__declares_a_silent_node_dead_and_recovers_its_jobs(
    cores: tuple[Core, Core],
) -> None:
    n1, n2 = cores
    NodeService(n1).register(url="u1")
    reaper = NodeService(n2)
    reaper.register(url="u2")
    requeue = add_job(n1, node="n1", attempt=1, handle="{}", external_id="9@1")
    last = add_job(n1, node="n1", attempt=2)
    cancelling = add_job(n1, node="n1", attempt=1, state=JobState.DELETING.value)
    slurm = add_job(n1, node="n1", attempt=1, runner="slurm", destination="c", handle="{}")
    elsewhere = add_job(n1, node="n2", attempt=1)

    assert not reaper.reap(adopt_runners={"local", "slurm"})  # n1 is fresh: nothing
    age(n1, "n1", 10)
    done = reaper.reap(adopt_runners={"local", "slurm"})
    assert done.dead == ["n1"]
    assert set(done.requeued) == {requeue} and done.failed == [last]
    assert done.deleted == [cancelling] and done.adopted == [slurm]

    row = job(n1, requeue)
    assert (row.state, row.node, row.attempt, row.handle, row.external_id) == (
        "queued", None, 1, None, None
    )  # fmt: skip
    assert row.state_reason == "requeued: node n1 died (attempt 1 of 2)"
    failed = job(n1, last)
    assert failed.state == "error" and failed.state_reason == "node n1 died (attempt 2 of 2)"
    assert job(n1, cancelling).state == "deleted"
    adopted = job(n1, slurm)
    assert (adopted.state, adopted.node, adopted.attempt, adopted.handle) == (
        "running", "n2", 1, "{}"
    )  # fmt: skip
    assert job(n1, elsewhere).node == "n2" and job(n1, elsewhere).state == "running"
    assert NodeService(n1).get(ADMIN, "n1")["state"] == "dead"
    assert not reaper.reap(adopt_runners={"local"})  # nothing left to do

    # The requeued job's next claim is attempt 2, wherever it runs.
    claimed = ExecutionService(n2, base_url="").claim_next(["local"], None).job
    assert isinstance(claimed, ClaimedJob) and (claimed.job_id, claimed.attempt) == (requeue, 2)


def test_reaper__leaves_slurm_jobs_to_a_node_that_has_slurm_and_never_reaps_itself(
    cores: tuple[Core, Core],
) -> None:
    n1, n2 = cores
    NodeService(n1).register(url="u1")
    reaper = NodeService(n2)
    reaper.register(url="u2")
    slurm = add_job(n1, node="n1", attempt=1, runner="slurm", destination="c")
    age(n1, "n1", 10)
    age(n2, "n2", 10)  # the reaper's own heartbeat is late too: it is still not dead
    done = reaper.reap(adopt_runners={"local"})
    assert done.dead == ["n1"] and done.adopted == []
    assert job(n1, slurm).node == "n1"
    assert reaper.get(ADMIN, "n2")["state"] == "up"


def test_stale_node__cannot_finish_or_requeue_an_attempt_that_moved_on(
    cores: tuple[Core, Core],
) -> None:
    n1, n2 = cores
    NodeService(n1).register(url="u1")
    NodeService(n2).register(url="u2")
    job_id = add_job(n1, node=None, attempt=0, state=JobState.QUEUED.value)
    stale = ExecutionService(n1, base_url="").claim_next(["local"], None).job
    assert isinstance(stale, ClaimedJob)
    age(n1, "n1", 10)
    assert NodeService(n2).reap(adopt_runners=set()).requeued == [job_id]
    fresh = ExecutionService(n2, base_url="").claim_next(["local"], None).job
    assert isinstance(fresh, ClaimedJob) and fresh.attempt == 2

    old = ExecutionService(n1, base_url="")
    status = RunStatus(RunState.EXITED, exit_code=3, finished_at=0.0)
    with pytest.raises(ConflictError):
        old.finish(stale, status)
    with pytest.raises(ConflictError):
        old.requeue(stale, "x")
    # Same attempt number, other node: the node fence alone refuses it.
    forged = ClaimedJob(job_id, 2, "local", stale.spec, node="n1")
    with pytest.raises(ConflictError):
        old.finish(forged, status)
    assert old.owners({job_id}) == {job_id: ("n2", 2, "running")}
    done = ExecutionService(n2, base_url="").finish(
        fresh, RunStatus(RunState.EXITED, exit_code=0, finished_at=0.0)
    )
    assert done.state == "ok"
    with n1.sessions.begin() as session:
        assert session.execute(select(Job.state).where(Job.id == job_id)).scalar() == "ok"


def test_callback_report_is_fenced_by_attempt_not_node(cores: tuple[Core, Core]) -> None:
    n1, _ = cores
    job_id = add_job(n1, node="n1", attempt=1)
    spec = RunSpec(job_id, (), str(n1.jobs_path / job_id / "work"), "", "", "")
    claimed = ClaimedJob(job_id, 1, "", spec)  # a wrapper's report: no node
    status = RunStatus(RunState.EXITED, exit_code=0, finished_at=0.0)
    assert ExecutionService(n1, base_url="").finish(claimed, status).state == "ok"


def test_config__dead_after_must_exceed_the_heartbeat() -> None:
    from jobferry.errors import ConfigError

    with pytest.raises(ConfigError, match="dead_after_s must be longer than node.heartbeat_s"):
        parse_config({"node": {"heartbeat_s": 5, "dead_after_s": 5}}, "t.yml")


def test_heartbeat__a_vanished_row_is_registered_again(cores: tuple[Core, Core]) -> None:
    n1, _ = cores
    nodes = NodeService(n1)
    incarnation = nodes.register(url="u")
    with n1.sessions.begin() as session:
        session.query(Node).filter(Node.name == "n1").delete()
    beat = nodes.heartbeat(incarnation, NodeUsage(4, 1000, 0, 0))
    assert beat.reregistered == 1
    assert not nodes.heartbeat(beat.reregistered, NodeUsage(4, 1000, 0, 0)).superseded
    assert nodes.get(ADMIN, "n1")["url"] == "u"
