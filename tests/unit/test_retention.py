"""Retention on the test run's engine: which jobs a purge takes (ended long ago, terminal)
and which it leaves (recent, still active, changed after selection), rounds bounded by
``retention.batch``, files-only vs rows, the 410 every service answers afterwards, and one
purger at a time on PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from jobferry.config import parse_config
from jobferry.errors import BusyError, GoneError, NotFoundError, ValidationError
from jobferry.services.core import Core, Principal
from jobferry.services.galaxy import GalaxyService
from jobferry.services.job_files import JobFilesService
from jobferry.services.jobs import JobService
from jobferry.services.retention import TRASH_PREFIX, PurgeKind, RetentionService
from jobferry.store.engine import check_schema, is_postgres
from jobferry.store.models import Job, JobFile, JobState, User, utcnow
from jobferry.store.records import insert_job
from tests.db import fresh_pg_database, on_postgres, with_database
from tests.services import require

ADMIN = Principal("u1", "admin", True)
DAY = timedelta(days=1)


def make_core(data: Path, name: str = "n1", *, url: str | None = None, **extra: Any) -> Core:
    config: dict[str, Any] = {"data_dir": str(data), "node": {"name": name}, **extra}
    config = {**config, "database": {"url": url}} if url else with_database(config, data)
    return Core(parse_config(config), node_name=name)


def new_store(core: Core) -> Core:
    core.ensure_dirs()
    check_schema(core.engine)
    with core.sessions.begin() as session:
        session.add(User(id="u1", username="admin", is_admin=True))
    return core


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = new_store(make_core(tmp_path / "data", retention={"batch": 3}))
    yield made
    made.close()


def add_job(
    core: Core,
    *,
    state: JobState = JobState.OK,
    ended_days_ago: float | None = 10,
    home: str | None = "n1",
    output: bytes = b"result\n",
) -> str:
    """A job with a directory holding one output (``work/out.txt``) and a stdout."""
    job_id = uuid.uuid4().hex[:16]
    job_dir = core.job_dir(job_id)
    (job_dir / "work").mkdir(parents=True)
    (job_dir / "work" / "out.txt").write_bytes(output)
    (job_dir / "stdout").write_bytes(b"hello\n")
    finished = None if ended_days_ago is None else utcnow() - ended_days_ago * DAY
    row = {
        "id": job_id,
        "uuid": str(uuid.uuid4()),
        "user_id": "u1",
        "name": "j",
        "argv": ["true"],
        "job_dir": str(job_dir),
        "state": state.value,
        "home_node": home,
        "attempt": 1,
        "finished_at": finished,
    }
    files = [{"kind": "output", "name": "out.txt", "size": len(output), "sha256": "0" * 64}]
    with core.sessions.begin() as session:
        insert_job(session, row, files)
    return job_id


def job(core: Core, job_id: str) -> Job | None:
    with core.sessions.begin() as session:
        found = session.get(Job, job_id)
        if found is not None:
            session.expunge(found)
        return found


def expired(core: Core, job_id: str) -> bool:
    found = job(core, job_id)
    assert found is not None
    return found.files_expired_at is not None and not core.job_dir(job_id).exists()


def untouched(core: Core, job_id: str) -> bool:
    found = job(core, job_id)
    assert found is not None
    return found.files_expired_at is None and (core.job_dir(job_id) / "work" / "out.txt").exists()


# --- what a purge takes, and what it leaves -----------------------------------------------


def test_purge_files__takes_terminal_jobs_ended_before_the_cutoff_only(core: Core) -> None:
    old = [add_job(core, state=s) for s in (JobState.OK, JobState.ERROR, JobState.DELETED)]
    recent = add_job(core, ended_days_ago=1)
    running = add_job(core, state=JobState.RUNNING, ended_days_ago=None)
    queued = add_job(core, state=JobState.QUEUED, ended_days_ago=None)
    # A non-terminal job with an end time set (a requeued job's old end): still not purged.
    deleting = add_job(core, state=JobState.DELETING, ended_days_ago=20)
    service = RetentionService(core)

    done = service.purge(5)

    assert sorted(done.job_ids) == sorted(old)
    assert all(expired(core, j) for j in old)
    assert all(untouched(core, j) for j in (recent, running, queued, deleting))
    # Each directory held out.txt (7 bytes) and stdout (6 bytes).
    assert done.bytes_freed == 3 * (7 + 6)
    assert not list(core.job_dir(old[0]).parent.glob(TRASH_PREFIX + "*"))
    # The rows stay, with their file records (the faces list them as expired).
    with core.sessions.begin() as session:
        assert session.execute(select(func.count()).select_from(JobFile)).scalar() == 7
    assert service.purge(5).job_ids == []  # nothing twice


def test_purge__dry_run_reports_the_same_and_removes_nothing(core: Core) -> None:
    old = add_job(core, output=b"x" * 1000)
    add_job(core, ended_days_ago=1)
    service = RetentionService(core)
    dry = service.purge(5, dry_run=True)
    assert dry.dry_run and dry.job_ids == [old] and dry.bytes_freed == 1006
    assert untouched(core, old)
    done = service.purge(5)
    assert done.job_ids == [old] and done.bytes_freed == 1006
    assert expired(core, old)


def test_purge__state_limits_to_one_terminal_state_and_refuses_a_non_terminal_one(
    core: Core,
) -> None:
    ok, error = add_job(core), add_job(core, state=JobState.ERROR)
    service = RetentionService(core)
    with pytest.raises(ValidationError, match="terminal"):
        service.purge(5, state="running")
    with pytest.raises(ValidationError):
        service.purge(-1)
    assert service.purge(5, state="error").job_ids == [error]
    assert untouched(core, ok)


def test_purge_rows__deletes_rows_files_and_directories_then_the_job_is_not_found(
    core: Core,
) -> None:
    old, recent = add_job(core), add_job(core, ended_days_ago=1)
    already = add_job(core)
    RetentionService(core).purge(5, state="ok", dry_run=False)  # files first: all old ones
    assert expired(core, already)
    done = RetentionService(core).purge(5, rows=True)
    assert done.kind is PurgeKind.ROWS and sorted(done.job_ids) == sorted([old, already])
    assert job(core, old) is None and not core.job_dir(old).exists()
    with core.sessions.begin() as session:
        left = session.execute(select(JobFile.job_id)).scalars().all()
    assert left == [recent]
    with pytest.raises(NotFoundError):
        JobService(core).get(ADMIN, old)
    assert untouched(core, recent)


# --- bounded rounds, and jobs that change under a purge ------------------------------------


def test_run_round__does_at_most_batch_jobs_oldest_first(tmp_path: Path) -> None:
    core = new_store(
        make_core(tmp_path / "data", retention={"files_days": 5, "rows_days": 30, "batch": 3})
    )
    try:
        jobs = [add_job(core, ended_days_ago=10 + i) for i in range(7)]
        gone_rows = add_job(core, ended_days_ago=40)
        service = RetentionService(core)
        first = service.run_round()
        # The oldest three files first (the 40-day job's among them), no budget left for rows.
        assert first.files is not None and len(first.files.job_ids) == 3 and first.rows is None
        assert first.files.job_ids[0] == gone_rows
        assert first.files.job_ids[1:] == [jobs[6], jobs[5]]
        second = service.run_round()
        assert second.files is not None and second.files.job_ids == [jobs[4], jobs[3], jobs[2]]
        third = service.run_round()
        assert third.files is not None and third.files.job_ids == [jobs[1], jobs[0]]
        assert third.rows is not None and third.rows.job_ids == [gone_rows]
        idle = service.run_round()
        assert idle.purged == 0 and not idle.locked_out
        assert job(core, gone_rows) is None
        assert all(expired(core, j) for j in jobs)
    finally:
        core.close()


def test_apply__jobs_that_became_active_after_selection_are_left_alone(core: Core) -> None:
    resumed, requeued, stays = add_job(core), add_job(core, state=JobState.ERROR), add_job(core)
    service = RetentionService(core)
    cutoff = utcnow() - 5 * DAY
    picked = [job_id for job_id, _ in service.select_candidates(PurgeKind.FILES, cutoff, limit=10)]
    assert sorted(picked) == sorted([resumed, requeued, stays])
    with core.sessions.begin() as session:  # another node, between selection and purge
        session.execute(update(Job).where(Job.id == resumed).values(state="running"))
        session.execute(
            update(Job).where(Job.id == requeued).values(state="queued", finished_at=None)
        )
    done = service.apply(PurgeKind.FILES, picked, cutoff)
    assert done.job_ids == [stays] and sorted(done.skipped) == sorted([resumed, requeued])
    assert untouched(core, resumed) and untouched(core, requeued) and expired(core, stays)
    # The same for rows.
    rows = service.apply(PurgeKind.ROWS, [resumed, requeued], cutoff)
    assert rows.job_ids == [] and job(core, resumed) is not None


def test_purge__a_directory_that_cannot_be_moved_leaves_its_job_as_it_was(core: Core) -> None:
    stuck, fine = add_job(core), add_job(core)
    # Something in the way of the rename: a non-empty directory where it would go.
    blocker = core.job_dir(stuck).with_name(TRASH_PREFIX + stuck)
    blocker.mkdir()
    (blocker / "x").write_bytes(b"x")
    done = RetentionService(core).purge(5)
    assert done.job_ids == [fine] and done.failed == [stuck]
    assert untouched(core, stuck) and expired(core, fine)  # rolled back: no 410, files there
    blocker.joinpath("x").unlink()
    blocker.rmdir()
    assert RetentionService(core).purge(5).job_ids == [stuck]  # the next purge takes it


def test_run_round__an_idle_round_is_one_indexed_query(tmp_path: Path) -> None:
    core = new_store(make_core(tmp_path / "data", retention={"files_days": 5}))
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    try:
        for _ in range(3):
            add_job(core, ended_days_ago=1)
        event.listen(core.engine, "before_cursor_execute", seen)
        try:
            assert RetentionService(core).run_round().purged == 0
        finally:
            event.remove(core.engine, "before_cursor_execute", seen)
        reads = [(s, p) for s, p in statements if "FROM jobs" in s]
        locks = [s for s, _ in statements if "advisory" in s]
        assert len(reads) == 1 and len(statements) == len(reads) + len(locks), statements
        assert len(locks) == (1 if is_postgres(core.engine) else 0)
        if not is_postgres(core.engine):
            with core.engine.connect() as conn:
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + reads[0][0], reads[0][1]).all()
            assert any("ix_jobs_files_expiry" in str(row) for row in plan), plan
    finally:
        core.close()


def test_purge__two_purgers_at_once_purge_each_job_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = new_store(make_core(data, retention={"batch": 2}))
    second = make_core(data, "n1", retention={"batch": 2})
    try:
        jobs = {add_job(first) for _ in range(9)}
        start = threading.Barrier(2)
        results: list[list[str]] = []

        def purge(core: Core) -> None:
            start.wait()
            results.append(RetentionService(core).purge(5).job_ids)

        threads = [threading.Thread(target=purge, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 2
        assert sorted(results[0] + results[1]) == sorted(jobs)  # each once, none twice
        assert all(expired(first, j) for j in jobs)
    finally:
        first.close()
        second.close()


def test_exclusive__on_postgres_one_purger_holds_the_lock_the_other_skips(
    tmp_path: Path,
) -> None:
    require("postgres")
    url = None if on_postgres() else fresh_pg_database()
    data = tmp_path / "data"
    one = new_store(make_core(data, "n1", url=url, retention={"files_days": 5}))
    url = url or str(one.engine.url.render_as_string(hide_password=False))
    two = make_core(data, "n2", url=url, retention={"files_days": 5})
    try:
        old = add_job(one)
        holder, other = RetentionService(one), RetentionService(two)
        with holder.exclusive() as held:
            assert held
            skipped = other.run_round()
            assert skipped.locked_out and skipped.files is None
            with pytest.raises(BusyError):
                other.purge(5, wait_s=0.5)
            assert untouched(one, old)
        done = other.run_round()  # released at the block's end
        assert not done.locked_out and done.files is not None and done.files.job_ids == [old]
    finally:
        one.close()
        two.close()


# --- several nodes without a shared filesystem ---------------------------------------------


def test_run_round__without_a_shared_filesystem_a_node_purges_its_home_jobs(
    tmp_path: Path,
) -> None:
    node = {"shared_filesystem": False}
    data = tmp_path / "data"
    n1 = new_store(make_core(data, "n1", node={"name": "n1", **node}, retention={"files_days": 5}))
    n2 = make_core(data, "n2", node={"name": "n2", **node}, retention={"files_days": 5})
    try:
        mine, theirs, nobody = add_job(n1), add_job(n1, home="n2"), add_job(n1, home=None)
        assert RetentionService(n1).lock_key != RetentionService(n2).lock_key
        done = RetentionService(n1).run_round()
        assert done.files is not None and sorted(done.files.job_ids) == sorted([mine, nobody])
        assert untouched(n1, theirs)
        done = RetentionService(n2).run_round()
        assert done.files is not None and done.files.job_ids == [theirs]
    finally:
        n1.close()
        n2.close()


# --- afterwards: every service answers 410, from the row ------------------------------------


def test_expired_files__every_service_answers_gone_with_files_expired(core: Core) -> None:
    job_id = add_job(core)
    RetentionService(core).purge(5)
    jobs = JobService(core)
    view = jobs.get(ADMIN, job_id)
    assert view.files_expired and jobs.read_log(view, "stdout") is None
    output = next(f for f in view.files if f.kind == "output")
    galaxy = GalaxyService(core, jobs)
    calls = [
        lambda: jobs.output_path(ADMIN, job_id, output.id),
        lambda: jobs.output_path(ADMIN, job_id, "out.txt"),
        lambda: galaxy.dataset_path(ADMIN, output.id),
        lambda: galaxy.dataset_file(galaxy.datasets(ADMIN, [output.id])[0]),
        lambda: JobFilesService(core).open_for_read(job_id, core.job_key(job_id), "work/out.txt"),
    ]
    for call in calls:
        with pytest.raises(GoneError) as caught:
            call()
        assert caught.value.details["files_expired"] is True
        assert caught.value.details["job_id"] == job_id
    assert galaxy.show_dataset(ADMIN, output.id).files_expired
    assert galaxy.show_job(ADMIN, job_id, full=True).files_expired
    with pytest.raises(NotFoundError):  # an unknown file is still 404
        jobs.output_path(ADMIN, job_id, "nothing.txt")
    # The 410 comes from the row: a directory put back changes nothing.
    (core.job_dir(job_id) / "work").mkdir(parents=True)
    with pytest.raises(GoneError):
        jobs.output_path(ADMIN, job_id, output.id)


def test_sweep_leftovers__removes_directories_an_interrupted_purge_left(core: Core) -> None:
    job_id = add_job(core)
    leftover = core.job_dir(job_id).with_name(TRASH_PREFIX + job_id)
    core.job_dir(job_id).rename(leftover)
    assert RetentionService(core).sweep_leftovers() == 1
    assert not leftover.exists()
