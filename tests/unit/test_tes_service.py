"""TesService on a real store (no daemon): what create stores and plans, how a task's
state is read back, the list's scan bound, the face's switch, and Basic credentials.

Jobs are never run here (no dispatcher: they stay queued); a running or ended job
is made by writing its row and its attempt's state file as the daemon and the task
program would, or by claiming and finishing it through ``ExecutionService`` (whose
end recording keeps a task's end in the store).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from jobferry import errors
from jobferry.config import parse_config
from jobferry.runners.base import RunState, RunStatus
from jobferry.runners.fake import FakeRunner
from jobferry.services import tes as tes_module
from jobferry.services import tes_plan
from jobferry.services.container import Services, build
from jobferry.services.core import Core, Principal
from jobferry.services.tes import ListQuery
from jobferry.services.tes_plan import TES_TASK_PROGRAM, plan_path, state_path
from jobferry.store import transitions
from jobferry.store.engine import check_schema
from jobferry.store.models import Job, JobState, TesTask
from tests.db import with_database

IMAGE = "jobferry-test/python:1"


def make_services(tmp_path: Path, tes: dict[str, Any]) -> Services:
    data = tmp_path / "data"
    config = parse_config(
        with_database(
            {
                "data_dir": str(data),
                "runners": {"docker": {"enabled": True}},
                "destinations": {
                    "local": {"runner": "local"},
                    "dock": {"runner": "docker", "image": IMAGE, "network": True, "cores": 2},
                },
                "tes": tes,
                "node": {"cores": 8},
                "storage": {"min_free_mb": 0, "min_free_percent": 0},
            },
            data,
        )
    )
    core = Core(config, runners={"local": FakeRunner(), "docker": FakeRunner()})
    core.ensure_dirs()
    check_schema(core.engine)
    return build(core)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = make_services(tmp_path, {"enabled": True, "destination": "dock", "user": "1234:1234"})
    yield built
    built.core.close()


@pytest.fixture
def alice(services: Services) -> Principal:
    user, _ = services.auth.create_user("alice")
    return Principal(user.id, user.username, False)


def task(**extra: Any) -> dict[str, Any]:
    return {"executors": [{"image": IMAGE, "command": ["echo", "hi"]}], **extra}


def test_create__stores_a_queued_local_job_on_the_docker_destination_with_its_plan(
    services: Services, alice: Principal
) -> None:
    task_id = services.tes.create(
        alice, task(name="t1", tags={"a": "b"}, resources={"cpu_cores": 3, "ram_gb": 0.5})
    )
    with services.core.sessions.begin() as session:
        job = session.get(Job, task_id)
        row = session.get(TesTask, task_id)
        assert job is not None and row is not None
        assert (job.runner, job.destination, job.state) == ("local", "dock", "queued")
        assert job.script_version_id is None and job.name == "t1"
        assert job.cores == 3 and job.memory_mb is None  # the containers get the memory
        assert job.argv == [
            services.core.config.interpreter,
            str(TES_TASK_PROGRAM),
            str(plan_path(Path(job.job_dir))),
        ]
        assert row.tags == {"a": "b"} and row.name == "t1" and row.user_id == alice.user_id
    plan = json.loads(plan_path(Path(job.job_dir)).read_text())
    assert plan["runtime"] == {
        "command": ["docker"],
        "user": "1234:1234",
        "network": True,  # the destination's
        "cpus": 3,
        "memory_mb": 512,
        "name": f"jobferry-{task_id}-{{attempt}}",  # the task program puts the attempt in
        "extra_args": [],
    }
    assert plan["task"]["executors"][0]["command"] == ["echo", "hi"]
    assert plan["state_path"] == str(Path(job.job_dir) / "tes" / "state-{attempt}.json")
    assert plan["root"].startswith(job.job_dir)


def test_create__a_local_destination_runs_containers_only_with_a_container_command(
    tmp_path: Path,
) -> None:
    refused = make_services(tmp_path / "a", {"enabled": True})  # routing.default: local
    allowed = make_services(tmp_path / "b", {"enabled": True, "container_command": ["podman"]})
    try:
        for built in (refused, allowed):
            built.auth.create_user("alice")
        principal = Principal(refused.auth.get_user("alice").id, "alice", False)
        with pytest.raises(errors.ValidationError, match="cannot run containers"):
            refused.tes.create(principal, task())
        principal = Principal(allowed.auth.get_user("alice").id, "alice", False)
        task_id = allowed.tes.create(principal, task())
        with allowed.core.sessions.begin() as session:
            job = session.get(Job, task_id)
            assert job is not None and job.destination == "local"
        plan = json.loads(plan_path(Path(job.job_dir)).read_text())
        assert plan["runtime"]["command"] == ["podman"]
    finally:
        refused.core.close()
        allowed.core.close()


def test_create__an_unknown_destination_parameter_is_400_and_leaves_nothing(
    services: Services, alice: Principal
) -> None:
    doc = task(resources={"backend_parameters": {"destination": "nowhere"}})
    with pytest.raises(errors.ValidationError, match="destination"):
        services.tes.create(alice, doc)
    with services.core.sessions.begin() as session:
        assert session.execute(select(Job.id)).first() is None
    assert not any(services.core.jobs_path.glob("*/*"))


def test_disabled_face__refuses_tasks_but_answers_service_info(tmp_path: Path) -> None:
    built = make_services(tmp_path, {})
    try:
        user, _ = built.auth.create_user("alice")
        principal = Principal(user.id, "alice", False)
        for call in (
            lambda: built.tes.create(principal, task()),
            lambda: built.tes.list_tasks(principal, ListQuery()),
            lambda: built.tes.get(principal, "x"),
            lambda: built.tes.cancel(principal, "x"),
        ):
            with pytest.raises(errors.NotAllowedByConfigError):
                call()
        assert built.tes.service_info("http://127.0.0.1/")["type"]["artifact"] == "tes"
    finally:
        built.core.close()


def _set_job(services: Services, task_id: str, **values: Any) -> Path:
    with services.core.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == task_id).values(**values))
        job = session.get(Job, task_id)
        assert job is not None
        return Path(job.job_dir)


def _state_file(job_dir: Path, phase: str, **extra: Any) -> None:
    path = state_path(job_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"phase": phase, "start_time": "2026-12-03T11:00:00.000000Z", "end_time": None}
    path.write_text(json.dumps({"logs": [], "outputs": [], "system_logs": [], **body, **extra}))


def test_get__the_state_comes_from_the_job_and_the_attempts_state_file(
    services: Services, alice: Principal
) -> None:
    task_id = services.tes.create(alice, task())
    assert services.tes.get(alice, task_id)["state"] == "QUEUED"
    job_dir = _set_job(services, task_id, state=JobState.RUNNING.value, attempt=1)
    assert services.tes.get(alice, task_id)["state"] == "QUEUED"  # the program has not begun
    _state_file(job_dir, "RUNNING")
    assert services.tes.get(alice, task_id)["state"] == "RUNNING"
    log = {"start_time": "2026-12-03T11:00:01.000000Z", "exit_code": 2, "stdout": "o"}
    _state_file(job_dir, "EXECUTOR_ERROR", logs=[log])
    _set_job(services, task_id, state=JobState.ERROR.value, exit_code=1)
    full = services.tes.get(alice, task_id, "FULL")
    assert full["state"] == "EXECUTOR_ERROR"
    assert full["logs"][0]["logs"][0]["exit_code"] == 2
    assert full["logs"][0]["metadata"]["attempt"] == "1"
    # Exit 1 without the program saying so (a crash): the system's error.
    _state_file(job_dir, "RUNNING")
    _set_job(services, task_id, state_reason="killed: walltime")
    full = services.tes.get(alice, task_id, "FULL")
    assert full["state"] == "SYSTEM_ERROR"
    assert "killed: walltime" in full["logs"][0]["system_logs"]


def test_get__another_users_task_and_a_plain_job_are_not_found(
    services: Services, alice: Principal
) -> None:
    task_id = services.tes.create(alice, task())
    user, _ = services.auth.create_user("bob")
    bob = Principal(user.id, "bob", False)
    with pytest.raises(errors.NotFoundError):
        services.tes.get(bob, task_id)
    with pytest.raises(errors.NotFoundError):
        services.tes.cancel(bob, task_id)
    admin = Principal(user.id, "bob", True)
    assert services.tes.get(admin, task_id)["id"] == task_id
    with services.core.sessions.begin() as session:
        session.execute(TesTask.__table__.delete())  # the job alone is no TES task
    with pytest.raises(errors.NotFoundError):
        services.tes.get(alice, task_id)


def test_cancel__a_queued_task_is_canceled_and_cancelling_again_is_no_error(
    services: Services, alice: Principal
) -> None:
    task_id = services.tes.create(alice, task())
    services.tes.cancel(alice, task_id)
    assert services.tes.get(alice, task_id)["state"] == "CANCELED"
    services.tes.cancel(alice, task_id)
    other = services.tes.create(alice, task())
    _set_job(services, other, state=JobState.OK.value, exit_code=0)
    services.tes.cancel(alice, other)  # ended: left as it is
    assert services.tes.get(alice, other)["state"] == "COMPLETE"


def test_list__a_scan_bound_ends_a_filtered_page_early_with_a_token_that_goes_on(
    services: Services, alice: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [services.tes.create(alice, task(tags={"n": str(n)})) for n in range(7)]
    monkeypatch.setattr(tes_module, "MAX_SCANNED", 3)
    seen: list[str] = []
    token = None
    for _ in range(10):
        only_the_oldest = ListQuery(tag_keys=["n"], tag_values=["0"], page_token=token)
        page = services.tes.list_tasks(alice, only_the_oldest)
        assert len(page.tasks) <= 1
        seen += [t["id"] for t in page.tasks]
        token = page.next_page_token
        if token is None:
            break
    assert seen == [ids[0]]


def test_basic_credentials__password_or_own_key_and_failures_are_limited(
    services: Services,
) -> None:
    user, key = services.auth.create_user("carol", email="carol@example.org")
    services.users.set_password("carol", "a long password 1")
    tes = services.tes
    assert tes.authenticate_basic("carol", "a long password 1", "1.2.3.4").user_id == user.id
    assert tes.authenticate_basic("carol", key, "1.2.3.4").user_id == user.id
    assert tes.authenticate_basic("carol@example.org", key, "1.2.3.4").user_id == user.id
    _, other_key = services.auth.create_user("dave")
    with pytest.raises(errors.InvalidCredentialsError):
        tes.authenticate_basic("carol", other_key, "1.2.3.4")  # dave's key, carol's name
    limit = services.core.config.api.baseauth_failures_per_minute
    with pytest.raises(errors.TooManyRequestsError):
        for _ in range(limit + 1):
            with pytest.raises(errors.InvalidCredentialsError):
                tes.authenticate_basic("erin", "wrong", "5.6.7.8")


def _attempt_file(job_dir: Path, attempt: int, phase: str, logs: list[dict[str, Any]]) -> None:
    """Attempt *attempt*'s state file, as the task program writes it."""
    path = state_path(job_dir, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"phase": phase, "start_time": "2026-12-03T11:00:00.000000Z", "end_time": None}
    path.write_text(json.dumps({"logs": logs, "outputs": [], "system_logs": [], **body}))


@pytest.mark.parametrize(
    ("exit_code", "phase", "final"),
    [(0, "COMPLETE", "COMPLETE"), (1, "EXECUTOR_ERROR", "EXECUTOR_ERROR")],
)
def test_end__a_requeued_tasks_two_attempts_and_final_state_outlive_its_job_directory(
    services: Services, alice: Principal, exit_code: int, phase: str, final: str
) -> None:
    """Attempt 1 is cut off (its node died: requeued), attempt 2 ends through the
    daemon's own end recording; then retention's removal of the job's directory
    changes nothing that GET or the list answers."""
    task_id = services.tes.create(alice, task(name="twice"))
    execution = services.callbacks.execution  # the one build() wires to keep TES ends
    first = execution.claim_next(["dock"], None).job
    assert first is not None and first.job_id == task_id and first.attempt == 1
    job_dir = Path(first.spec.job_dir)
    log = {"start_time": "2026-12-03T11:00:01.000000Z", "exit_code": 0, "stdout": "one"}
    _attempt_file(job_dir, 1, "RUNNING", [log])
    with services.core.sessions.begin() as session:
        transitions.requeue_job(session, task_id, 1, "requeued: node n1 is dead")
    queued = services.tes.get(alice, task_id, "FULL")
    assert queued["state"] == "QUEUED" and len(queued["logs"]) == 1
    assert "attempt 1 did not end: the task was requeued" in queued["logs"][0]["system_logs"]
    second = execution.claim_next(["dock"], None).job
    assert second is not None and second.attempt == 2
    running = services.tes.get(alice, task_id, "FULL")
    assert running["state"] == "QUEUED"  # attempt 2's program has not begun
    assert [a["logs"][0]["stdout"] for a in running["logs"]] == ["one"]
    _attempt_file(job_dir, 2, "RUNNING", [])
    assert services.tes.get(alice, task_id)["state"] == "RUNNING"  # attempt 2's own file
    log2 = {**log, "stdout": "two", "exit_code": exit_code}
    _attempt_file(job_dir, 2, phase, [log2])
    status = RunStatus(RunState.EXITED, exit_code=exit_code, finished_at=time.time())
    assert execution.finish(second, status).state == ("ok" if exit_code == 0 else "error")

    ended = services.tes.get(alice, task_id, "FULL")
    assert ended["state"] == final
    assert [a["metadata"]["attempt"] for a in ended["logs"]] == ["1", "2"]
    assert "node" not in ended["logs"][0]["metadata"]  # only the job's current node is known
    assert [a["logs"][0]["stdout"] for a in ended["logs"]] == ["one", "two"]
    assert "attempt 1 did not end: the task was requeued" in ended["logs"][0]["system_logs"]
    with services.core.sessions.read() as connection:
        kept = connection.execute(
            select(TesTask.final_state).where(TesTask.job_id == task_id)
        ).scalar()
    assert kept == final
    listed = services.tes.list_tasks(alice, ListQuery(state=final, view="FULL")).tasks
    shutil.rmtree(job_dir)  # what retention does to an old job's files
    assert services.tes.get(alice, task_id, "FULL") == ended
    assert services.tes.get(alice, task_id)["state"] == final
    assert services.tes.list_tasks(alice, ListQuery(state=final, view="FULL")).tasks == listed
    assert [t["id"] for t in listed] == [task_id]


def test_end__a_job_without_a_tes_directory_is_left_alone(
    services: Services, alice: Principal
) -> None:
    """The end hook runs for every job: one without a ``tes`` directory (any job that is
    no TES task) costs a stat and writes nothing; the task then reads from its job."""
    task_id = services.tes.create(alice, task())
    claimed = services.callbacks.execution.claim_next(["dock"], None).job
    assert claimed is not None
    shutil.rmtree(Path(claimed.spec.job_dir) / "tes")  # as for any other job
    status = RunStatus(RunState.EXITED, exit_code=0, finished_at=time.time())
    services.callbacks.execution.finish(claimed, status)
    with services.core.sessions.read() as connection:
        row = connection.execute(
            select(TesTask.final_state, TesTask.final_logs).where(TesTask.job_id == task_id)
        ).first()
    assert row is not None and row.final_state is None and row.final_logs is None
    assert services.tes.get(alice, task_id)["state"] == "COMPLETE"  # from the job's row


def test_end__what_the_store_keeps_of_an_attempt_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output file logs past ``MAX_KEPT_OUTPUTS`` and the oldest executors' tails past
    ``MAX_KEPT_BYTES`` are left out, and a system log line says so."""
    monkeypatch.setattr(tes_plan, "MAX_KEPT_OUTPUTS", 2)
    monkeypatch.setattr(tes_plan, "MAX_KEPT_BYTES", 5000)
    logs = [{"exit_code": 0, "stdout": str(n) * 2000, "stderr": ""} for n in range(4)]
    outputs = [{"url": f"file:///o/{n}", "path": f"/o/{n}", "size_bytes": "1"} for n in range(5)]
    path = state_path(tmp_path, 2)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"phase": "COMPLETE", "logs": logs, "outputs": outputs}))
    first, second = tes_plan.attempt_files(tmp_path, 2)
    assert first is None  # attempt 1 wrote nothing
    assert second is not None and len(json.dumps(second)) <= 5000
    assert [o["path"] for o in second["outputs"]] == ["/o/0", "/o/1"]
    assert ["stdout" in log for log in second["logs"]] == [False, False, True, True]
    assert second["system_logs"] == [
        "3 more output files not listed",
        "stdout and stderr of the first 2 executors not kept (too long)",
    ]
