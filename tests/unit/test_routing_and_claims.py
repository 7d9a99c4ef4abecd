"""Routing rules, resource checks at submission, and resource-aware claims."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from jobferry.config import parse_config
from jobferry.errors import ConfigError, UnsatisfiableError, ValidationError
from jobferry.runners.base import Capacity
from jobferry.services.routing import (
    Placement,
    ResourceRequest,
    Resources,
    Router,
    check_fits,
    parse_request,
)
from jobferry.store.models import Job, JobState, User
from jobferry.store.transitions import (
    NodeResources,
    claim_next_job,
    more_queued,
    running_per_destination,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)

CONFIG = {
    "runners": {"docker": {"enabled": True}, "slurm": {"enabled": True}},
    "destinations": {
        "local": {"runner": "local"},
        "big": {"runner": "local", "cores": 4, "memory_mb": 8000},
        "box": {"runner": "docker", "image": "img:1"},
        "cluster": {"runner": "slurm", "partition": "debug", "walltime_s": 600},
    },
    "routing": {
        "default": "local",
        "rules": [
            {"script": "heavy", "destination": "cluster"},
            {"tool": "boxed", "destination": "box"},
            {"user": "bob", "destination": "big"},
            {"group": "containers", "destination": "box"},
        ],
    },
}


# --- configuration -------------------------------------------------------------------------


def test_config__rule_naming_an_unknown_destination_is_an_error_naming_the_key() -> None:
    data = {
        **CONFIG,
        "routing": {"default": "local", "rules": [{"user": "x", "destination": "nope"}]},
    }
    with pytest.raises(
        ConfigError, match=r"routing\.rules\.0\.destination: unknown destination 'nope'"
    ):
        parse_config(data, "test.yml")


def test_config__unknown_default_destination_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"routing\.default: unknown destination 'gone'"):
        parse_config({"routing": {"default": "gone"}}, "test.yml")


def test_config__destination_of_a_disabled_runner_is_an_error() -> None:
    data = {"destinations": {"local": {}, "c": {"runner": "slurm"}}}
    with pytest.raises(
        ConfigError, match=r"destinations\.c\.runner: runner 'slurm' is not enabled"
    ):
        parse_config(data, "test.yml")


def test_config__docker_destination_needs_an_image_and_remote_needs_a_remote_runner() -> None:
    with pytest.raises(ConfigError, match="needs an image"):
        parse_config(
            {
                "runners": {"docker": {"enabled": True}},
                "destinations": {"local": {}, "d": {"runner": "docker"}},
            }
        )
    with pytest.raises(ConfigError, match="staging: remote needs runner docker or slurm"):
        parse_config({"destinations": {"local": {"staging": "remote"}}})


def test_config__a_rule_names_exactly_one_match() -> None:
    rules = [{"user": "a", "script": "b", "destination": "local"}]
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_config({"routing": {"default": "local", "rules": rules}})


# --- routing ---------------------------------------------------------------------------------


@pytest.fixture
def router() -> Router:
    return Router(parse_config(CONFIG))


@pytest.mark.parametrize(
    ("slug", "group", "user", "tool", "expected"),
    [
        ("heavy", None, "alice", None, "cluster"),
        ("other", None, "alice", "boxed", "box"),
        ("other", None, "bob", None, "big"),
        ("other", "containers", "alice", None, "box"),
        ("heavy", None, "bob", None, "cluster"),  # first rule wins
        ("other", None, "alice", None, "local"),  # no rule: the default
    ],
)
def test_route__first_matching_rule_wins_else_the_default(
    router: Router, slug: str, group: str | None, user: str, tool: str | None, expected: str
) -> None:
    assert router.route(slug=slug, group=group, username=user, tool_id=tool) == expected


def test_place__destination_defaults_and_request_overrides(router: Router) -> None:
    placed = router.place(ResourceRequest(), slug="heavy", group=None, username="a")
    assert placed == Placement("cluster", "slurm", Resources(1, None, 0, 600))
    asked = ResourceRequest(destination="big", cores=2, walltime_s=5)
    placed = router.place(asked, slug="x", group=None, username="a")
    assert placed == Placement("big", "local", Resources(2, 8000, 0, 5))


def test_place__unknown_destination_is_a_validation_error(router: Router) -> None:
    with pytest.raises(ValidationError, match="unknown destination 'moon'"):
        router.place(ResourceRequest(destination="moon"), slug="x", group=None, username="a")


def test_check_fits__a_job_that_can_never_fit_is_refused_with_what_it_asks() -> None:
    placed = Placement("big", "local", Resources(64, 100, 1, None))
    with pytest.raises(UnsatisfiableError) as caught:
        check_fits(placed, Capacity(cores=8, memory_mb=1000, gpus=0, where="node n1"))
    message = caught.value.message
    assert "64 cores (at most 8)" in message and "1 GPUs (at most 0)" in message
    assert "node n1" in message
    check_fits(placed, None)  # unknown capacity: the runner judges
    check_fits(Placement("big", "local", Resources(8, 1000, 0, None)), Capacity(8, 1000, 0))


def test_parse_request__form_strings_and_json_numbers() -> None:
    assert parse_request({"cores": "2", "memory_mb": 512, "walltime_s": "1.5"}) == ResourceRequest(
        None, 2, 512, None, 1.5
    )
    assert parse_request({"destination": "", "cores": None}) == ResourceRequest()
    with pytest.raises(ValidationError) as caught:
        parse_request({"cores": "0", "gpus": "many", "memory_mb": True})
    assert set(caught.value.errors) == {"cores", "gpus", "memory_mb"}


# --- claims ----------------------------------------------------------------------------------


def add(
    sessions: sessionmaker[Session],
    user_id: str,
    destination: str = "local",
    *,
    cores: int = 1,
    memory_mb: int | None = None,
    gpus: int = 0,
    priority: int = 0,
    age: int = 0,
) -> str:
    with sessions.begin() as session:
        job = Job(
            uuid=str(uuid.uuid4()),
            user_id=user_id,
            name="j",
            argv=["true"],
            job_dir="/nonexistent",
            state=JobState.QUEUED.value,
            destination=destination,
            runner="local",
            cores=cores,
            memory_mb=memory_mb,
            gpus=gpus,
            priority=priority,
            created_at=T0 + timedelta(seconds=age),
        )
        session.add(job)
        session.flush()
        return job.id


def fit(free_cores: int, total_cores: int = 4, free_memory: int = 1000) -> NodeResources:
    return NodeResources(total_cores, 1000, 0, free_cores, free_memory, 0)


def claim_one(
    sessions: sessionmaker[Session], destinations: list[str], f: NodeResources | None
) -> str | None | bool:
    """The claimed job's id; None: nothing queued; False: the head job is reserved."""
    with sessions.begin() as session:
        got = claim_next_job(session, destinations=destinations, node="n1", fit=f)
        if got.job is not None:
            assert not got.held_back
            return got.job.id
        return False if got.held_back else None


def test_claim_next__priority_then_age_and_only_named_destinations(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    old = add(sessions, user_id, age=0)
    new = add(sessions, user_id, age=1)
    urgent = add(sessions, user_id, age=2, priority=5)
    add(sessions, user_id, "elsewhere", age=-5)
    order = [claim_one(sessions, ["local"], None) for _ in range(4)]
    assert order == [urgent, old, new, None]


def test_claim_next__the_head_job_is_reserved_until_it_fits(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    big = add(sessions, user_id, cores=3, age=0)
    small = add(sessions, user_id, cores=1, age=1)
    # Two cores free: the big head job does not fit, and the small one must not jump it.
    assert claim_one(sessions, ["local"], fit(free_cores=2)) is False
    assert claim_one(sessions, ["local"], fit(free_cores=3)) == big
    assert claim_one(sessions, ["local"], fit(free_cores=1)) == small


def test_claim_next__a_job_too_big_for_this_node_is_left_for_another(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    huge = add(sessions, user_id, cores=16, age=0)
    small = add(sessions, user_id, age=1)
    assert claim_one(sessions, ["local"], fit(free_cores=4)) == small
    assert claim_one(sessions, ["local"], fit(free_cores=4, total_cores=16)) is False
    assert claim_one(sessions, ["local"], fit(free_cores=16, total_cores=16)) == huge


def test_claim_next__memory_counts_too(sessions: sessionmaker[Session], user_id: str) -> None:
    add(sessions, user_id, memory_mb=800)
    assert claim_one(sessions, ["local"], fit(free_cores=4, free_memory=500)) is False
    assert isinstance(claim_one(sessions, ["local"], fit(free_cores=4, free_memory=800)), str)


def test_claim_next__increments_the_attempt_and_records_the_node(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    job_id = add(sessions, user_id)
    assert claim_one(sessions, ["local"], None) == job_id
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.attempt, job.node) == ("running", 1, "n1")
        assert running_per_destination(session, ["local", "x"]) == {"local": 1}


def test_claim_next__fair_share_one_users_backlog_does_not_block_anothers_first_job(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    with sessions.begin() as session:
        bob = User(username="bob")
        session.add(bob)
        session.flush()
        bob_id = bob.id
    backlog = [add(sessions, user_id, age=i) for i in range(50)]
    bobs = add(sessions, bob_id, age=100)  # queued long after alice's backlog
    first = claim_one(sessions, ["local"], None)
    second = claim_one(sessions, ["local"], None)
    assert first == backlog[0]
    assert second == bobs  # bob runs nothing yet: he goes before alice's 2nd job
    assert claim_one(sessions, ["local"], None) == backlog[1]


def test_claim_next__priority_still_beats_fair_share(
    sessions: sessionmaker[Session], user_id: str
) -> None:
    add(sessions, user_id, age=0)
    urgent = add(sessions, user_id, age=1, priority=9)
    assert claim_one(sessions, ["local"], None) == urgent


@pytest.mark.parametrize(
    ("behind", "left"),
    [
        ({}, True),  # a second job of the destination
        ({"destination": "elsewhere"}, False),  # not one of the claim's destinations
        ({"cores": 8}, False),  # too big for this node, ever
        (None, False),  # nothing behind the claimed job
    ],
)
def test_claim_next__says_whether_a_claimable_job_is_left_as_more_queued_does(
    sessions: sessionmaker[Session], user_id: str, behind: dict[str, object] | None, left: bool
) -> None:
    add(sessions, user_id, age=0)
    if behind is not None:
        add(sessions, user_id, age=1, **behind)  # type: ignore[arg-type]
    with sessions.begin() as session:
        got = claim_next_job(session, destinations=["local"], node="n1", fit=fit(4))
        assert got.job is not None
        asked = more_queued(session, destinations=["local"], fit=fit(4))
    # SQLite's claim reads the next job too; PostgreSQL's locks what it reads, so it
    # says None and the caller asks more_queued.
    assert asked is left
    assert got.more in (left, None)
    if session.get_bind().dialect.name == "sqlite":
        assert got.more is left
