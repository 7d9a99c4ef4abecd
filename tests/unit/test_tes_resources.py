"""TES resources at create (a real store, no daemon): a task no node could ever hold is
refused with 400 naming the resource (disk: more than the job directories' whole
file system); one that fits is queued with its cores and
memory; ``preemptible`` and ``zones`` are recorded and read back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from jobferry import errors
from jobferry.http_status import http_status
from jobferry.services.container import Services
from jobferry.services.core import Principal
from jobferry.store.models import Job
from tests.unit.test_tes_service import make_services, task


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = make_services(tmp_path, {"enabled": True, "destination": "dock"})
    yield built
    built.core.close()


@pytest.fixture
def alice(services: Services) -> Principal:
    user, _ = services.auth.create_user("alice")
    return Principal(user.id, user.username, False)


@pytest.mark.parametrize(
    ("resources", "named"),
    [({"cpu_cores": 64}, "core"), ({"ram_gb": 100000}, "memory"), ({"disk_gb": 999999}, "disk")],
    ids=["more-cores-than-any-node", "more-memory-than-any-node", "more-disk-than-the-data-dir"],
)
def test_create__a_task_no_node_could_ever_hold_is_refused_naming_the_resource(
    services: Services, alice: Principal, resources: dict[str, int], named: str
) -> None:
    with pytest.raises(errors.ValidationError, match=named) as refused:
        services.tes.create(alice, task(resources=resources))
    assert http_status(refused.value) == 400  # the one error table
    with services.core.sessions.read() as connection:
        assert connection.execute(select(Job.id)).first() is None  # nothing stored


def test_create__resources_that_fit_become_the_jobs_and_the_rest_is_recorded(
    services: Services, alice: Principal
) -> None:
    resources = {
        "cpu_cores": 2,
        "ram_gb": 0.5,
        "disk_gb": 0.001,
        "preemptible": True,
        "zones": ["a", "b"],
    }
    task_id = services.tes.create(alice, task(resources=resources))
    with services.core.sessions.read() as connection:
        cores = connection.execute(select(Job.cores).where(Job.id == task_id)).scalar_one()
    assert cores == 2
    shown = services.tes.get(alice, task_id, "BASIC")
    assert shown["resources"]["preemptible"] is True
    assert shown["resources"]["zones"] == ["a", "b"]
    assert shown["resources"]["ram_gb"] == 0.5
    assert shown["resources"]["disk_gb"] == 0.001
