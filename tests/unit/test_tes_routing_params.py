"""TES tasks' routing (``tes``/``image``/``user`` rules, ``Router.route_task``) and
backend parameters (``slurm_partition``, ``slurm_qos``, ``docker_network``): which
destination a task goes to, what its destination understands, what is refused or
ignored, what service-info advertises, and how the Slurm ones reach the run spec
of a claimed job (through ``jobs.runner_options``), on a real store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobferry import errors
from jobferry.config import Config, parse_config
from jobferry.runners.fake import FakeRunner
from jobferry.services import tes_params
from jobferry.services.container import Services, build
from jobferry.services.core import Core, Principal
from jobferry.services.routing import Router
from jobferry.services.tes_plan import plan_path
from jobferry.store.engine import check_schema
from jobferry.store.models import Job, TesTask
from tests.db import with_database

IMAGE = "jobferry-test/python:1"

DESTINATIONS: dict[str, Any] = {
    "local": {"runner": "local"},
    "dock": {"runner": "docker", "image": IMAGE},
    "bio": {"runner": "docker", "image": IMAGE},
    "cluster": {"runner": "slurm", "partition": "debug", "container": {"runtime": "docker"}},
    "cluster-plain": {"runner": "slurm"},
}


def config(rules: list[dict[str, Any]] | None = None, **tes: Any) -> Config:
    return parse_config(
        {
            "runners": {"docker": {"enabled": True}, "slurm": {"enabled": True}},
            "destinations": DESTINATIONS,
            "routing": {"rules": rules or []},
            "tes": tes,
        }
    )


# --- the rules' schema ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"tes": False}, "only true"),
        ({"tes": True, "user": "alice"}, "exactly one of"),
        ({"image": "x*", "script": "s"}, "exactly one of"),
        ({"image": ""}, "non-empty glob"),
        ({}, "exactly one of script, tool, user, group, tes, image"),
    ],
)
def test_routing_rule__refuses_tes_false_and_anything_but_one_match(
    rule: dict[str, Any], message: str
) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        config([{**rule, "destination": "dock"}])


def test_docker_networks__must_be_network_names() -> None:
    assert config(docker_networks=["jf-net.1"]).tes.docker_networks == ["jf-net.1"]
    for bad in ("container:abc", "-x", "a b", ""):
        with pytest.raises(errors.ConfigError, match="tes.docker_networks"):
            config(docker_networks=[bad])


# --- Router.route_task ----------------------------------------------------------------


def test_route_task__first_matching_tes_image_or_user_rule_wins() -> None:
    router = Router(
        config(
            [
                {"script": "s", "destination": "local"},
                {"group": "g", "destination": "local"},
                {"tool": "t", "destination": "local"},
                {"image": "quay.io/biocontainers/*", "destination": "bio"},
                {"user": "carol", "destination": "cluster"},
                {"tes": True, "destination": "dock"},
                {"user": "dave", "destination": "cluster"},  # after tes: never reached
            ],
            destination="cluster",
        )
    )
    # Any one executor's image matching is enough; the image rule comes first.
    images = ["alpine:3", "quay.io/biocontainers/samtools:1.17"]
    assert router.route_task(images, "carol") == "bio"
    assert router.route_task(["alpine:3"], "carol") == "cluster"
    assert router.route_task(["alpine:3"], "dave") == "dock"  # the tes rule first
    # The glob is matched case-sensitively, against the whole image name.
    assert router.route_task(["QUAY.IO/biocontainers/x"], "bob") == "dock"
    assert router.route_task(["mirror/quay.io/biocontainers/x"], "bob") == "dock"


def test_route_task__without_a_match__tes_destination_then_routing_default() -> None:
    rules = [{"script": "s", "destination": "dock"}, {"user": "alice", "destination": "bio"}]
    assert Router(config(rules, destination="cluster")).route_task(["a"], "bob") == "cluster"
    assert Router(config(rules)).route_task(["a"], "bob") == "local"
    assert Router(config(rules)).route_task(["a"], "alice") == "bio"


def test_route__scripts_and_galaxy_jobs_never_match_tes_or_image_rules() -> None:
    router = Router(
        config(
            [
                {"tes": True, "destination": "dock"},
                {"image": "*", "destination": "bio"},
                {"user": "alice", "destination": "cluster-plain"},
            ]
        )
    )
    assert router.route(slug="s", group=None, username="bob") == "local"
    assert router.route(slug="", group=None, username="bob", tool_id="cat1") == "local"
    assert router.route(slug="s", group=None, username="alice") == "cluster-plain"


# --- what a destination understands ---------------------------------------------------


def doc(params: dict[str, str], strict: bool = False) -> dict[str, Any]:
    resources = {"backend_parameters": params, "backend_parameters_strict": strict}
    return {"executors": [{"image": IMAGE, "command": ["true"]}], "resources": resources}


def test_choose__slurm_parameters_on_a_slurm_destination_become_runner_options() -> None:
    cfg = config()
    chosen = tes_params.choose(
        cfg, cfg.destinations["cluster"], doc({"SLURM_Partition": "big", "slurm_qos": "hi.1"})
    )
    assert chosen == tes_params.Chosen({"partition": "big", "qos": "hi.1"}, None, [])


@pytest.mark.parametrize("value", ["a b", "x;rm", "", "--x=1 y", "p" * 129, "é"])
def test_choose__a_slurm_value_that_is_not_a_plain_word_is_400_naming_the_field(
    value: str,
) -> None:
    cfg = config()
    with pytest.raises(errors.ValidationError) as caught:
        tes_params.choose(cfg, cfg.destinations["cluster"], doc({"slurm_qos": value}))
    assert "resources.backend_parameters.slurm_qos" in caught.value.errors


def test_choose__parameters_a_destination_does_not_understand_are_unsupported() -> None:
    cfg = config(docker_networks=["jf-net"])
    params = {"slurm_partition": "big", "docker_network": "other", "gpu": "x"}
    chosen = tes_params.choose(cfg, cfg.destinations["dock"], doc(params))
    # docker_network names a network the operator did not allow: unsupported too.
    assert chosen == tes_params.Chosen(None, None, ["docker_network", "gpu", "slurm_partition"])
    allowed = tes_params.choose(cfg, cfg.destinations["dock"], doc({"docker_network": "jf-net"}))
    assert allowed == tes_params.Chosen(None, "jf-net", [])
    # A destination with container: understands it too; no network allowed: nobody does.
    on_cluster = tes_params.choose(
        cfg, cfg.destinations["cluster"], doc({"docker_network": "jf-net"})
    )
    assert on_cluster.network == "jf-net"
    none_allowed = config()
    assert tes_params.choose(
        none_allowed, none_allowed.destinations["dock"], doc({"docker_network": "jf-net"})
    ).unsupported == ["docker_network"]
    assert tes_params.note(chosen) == [
        "backend parameters ignored (not supported): docker_network, gpu, slurm_partition"
    ]


def test_choose__strict__unsupported_parameters_are_400_naming_each() -> None:
    cfg = config(docker_networks=["jf-net"])
    with pytest.raises(errors.ValidationError, match="not supported here: slurm_qos") as caught:
        tes_params.choose(cfg, cfg.destinations["dock"], doc({"slurm_qos": "x"}, strict=True))
    assert list(caught.value.errors) == ["resources.backend_parameters.slurm_qos"]
    # Strict with everything understood: accepted.
    assert (
        tes_params.choose(
            cfg, cfg.destinations["dock"], doc({"docker_network": "jf-net"}, strict=True)
        ).network
        == "jf-net"
    )


def test_advertised__names_what_some_tes_capable_destination_understands() -> None:
    assert tes_params.advertised(config()) == ["destination", "slurm_partition", "slurm_qos"]
    assert tes_params.advertised(config(docker_networks=["n"])) == list(tes_params.KNOWN)
    # Only a slurm destination that cannot run containers: its parameters are useless.
    no_tes_slurm = parse_config(
        {
            "runners": {"docker": {"enabled": True}, "slurm": {"enabled": True}},
            "destinations": {"local": {}, "dock": DESTINATIONS["dock"], "s": {"runner": "slurm"}},
        }
    )
    assert tes_params.advertised(no_tes_slurm) == ["destination"]


# --- TesService.create and the run spec, on a real store --------------------------------


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    data = tmp_path / "data"
    cfg = parse_config(
        with_database(
            {
                "data_dir": str(data),
                "runners": {"docker": {"enabled": True}, "slurm": {"enabled": True}},
                "destinations": {
                    **DESTINATIONS,
                    "cluster": {**DESTINATIONS["cluster"], "sbatch_args": ["--qos=low"]},
                },
                "routing": {
                    "rules": [
                        {"user": "carol", "destination": "cluster"},
                        {"image": "bio/*", "destination": "bio"},
                    ]
                },
                "tes": {"enabled": True, "destination": "dock", "docker_networks": ["jf-net"]},
                "node": {"cores": 8},
                "storage": {"min_free_mb": 0, "min_free_percent": 0},
            },
            data,
        )
    )
    core = Core(cfg, runners={"local": FakeRunner(), "docker": FakeRunner(), "slurm": FakeRunner()})
    core.ensure_dirs()
    check_schema(core.engine)
    built = build(core)
    yield built
    built.core.close()


def principal(services: Services, name: str) -> Principal:
    user, _ = services.auth.create_user(name)
    return Principal(user.id, user.username, False)


def stored(services: Services, task_id: str) -> tuple[Job, TesTask]:
    with services.core.sessions.begin() as session:
        job, task = session.get(Job, task_id), session.get(TesTask, task_id)
        assert job is not None and task is not None
        session.expunge_all()
        return job, task


def test_create__destination_parameter_then_first_rule_then_tes_destination(
    services: Services,
) -> None:
    bob, carol = principal(services, "bob"), principal(services, "carol")
    bio = {
        "executors": [
            {"image": "alpine", "command": ["true"]},
            {"image": "bio/x", "command": ["true"]},
        ]
    }
    cases = [
        (bob, doc({}), "dock"),  # no rule matches: tes.destination
        (bob, bio, "bio"),  # an image rule
        (carol, bio, "cluster"),  # the user rule comes first
        (carol, doc({"Destination": "bio"}), "bio"),  # the parameter beats every rule
    ]
    for who, task, expected in cases:
        job, _ = stored(services, services.tes.create(who, task))
        assert job.destination == expected, (who.username, task)


def test_create__slurm_parameters_reach_the_claimed_jobs_sbatch_options(
    services: Services,
) -> None:
    carol = principal(services, "carol")
    task_id = services.tes.create(carol, doc({"slurm_partition": "big", "slurm_qos": "high"}))
    job, task = stored(services, task_id)
    assert (job.runner, job.destination) == ("slurm", "cluster")
    assert job.runner_options == {"partition": "big", "qos": "high"}
    assert task.notes == []
    assert task.doc["resources"]["backend_parameters"] == {
        "slurm_partition": "big",
        "slurm_qos": "high",
    }
    # The claim's own record carries them (its RETURNING), and the spec applies them:
    # the partition over the destination's, the qos after its sbatch_args (last wins).
    claimed = services.callbacks.execution.claim_next(["cluster"], None).job
    assert claimed is not None and claimed.job_id == task_id
    assert claimed.spec.partition == "big"
    assert claimed.spec.sbatch_args == ("--qos=low", "--qos=high")
    # A job without options keeps its destination's.
    other = services.tes.create(carol, doc({}))
    claimed = services.callbacks.execution.claim_next(["cluster"], None).job
    assert claimed is not None and claimed.job_id == other
    assert (claimed.spec.partition, claimed.spec.sbatch_args) == ("debug", ("--qos=low",))


def test_create__ignored_parameters_are_noted_and_not_stored(services: Services) -> None:
    bob = principal(services, "bob")
    params = {"slurm_partition": "big", "docker_network": "jf-net", "other": "1"}
    task_id = services.tes.create(bob, doc(params))  # to dock: no slurm there
    job, task = stored(services, task_id)
    assert job.runner_options is None
    assert task.notes == ["backend parameters ignored (not supported): other, slurm_partition"]
    assert task.doc["resources"]["backend_parameters"] == {"docker_network": "jf-net"}
    full = services.tes.get(bob, task_id, "FULL")
    assert full["resources"]["backend_parameters"] == {"docker_network": "jf-net"}
    plan = json.loads(plan_path(Path(job.job_dir)).read_text())
    assert plan["runtime"]["network"] is True
    assert plan["runtime"]["extra_args"] == ["--network", "jf-net"]
    # Without the parameter: no network (the destination's own rule).
    job, _ = stored(services, services.tes.create(bob, doc({})))
    plan = json.loads(plan_path(Path(job.job_dir)).read_text())
    assert (plan["runtime"]["network"], plan["runtime"]["extra_args"]) == (False, [])


def test_create__strict_with_an_unsupported_parameter_is_400_and_stores_nothing(
    services: Services,
) -> None:
    bob = principal(services, "bob")
    for params in ({"slurm_qos": "high"}, {"docker_network": "not-allowed"}):
        with pytest.raises(errors.ValidationError) as caught:
            services.tes.create(bob, doc(params, strict=True))
        assert f"resources.backend_parameters.{next(iter(params))}" in caught.value.errors
    with pytest.raises(errors.ValidationError, match="slurm_partition"):
        services.tes.create(bob, doc({"destination": "cluster", "slurm_partition": "a b"}))
    with services.core.sessions.begin() as session:
        assert session.query(Job).count() == 0


def test_service_info__lists_the_parameters_the_configuration_allows(
    services: Services,
) -> None:
    info = services.tes.service_info("http://127.0.0.1/")
    assert info["tesResources_backend_parameters"] == [
        "destination",
        "slurm_partition",
        "slurm_qos",
        "docker_network",
    ]
