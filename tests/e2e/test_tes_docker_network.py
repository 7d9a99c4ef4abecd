"""The ``docker_network`` backend parameter on a Docker destination: a task that names
a network the operator allowed (``tes.docker_networks``) has its executors join it;
one without the parameter gets no network (``--network none``: loopback only), and
one naming a network not allowed runs without it, with a system log line saying so.

The network is this module's own (``jftest-<random>``), removed by its exact name
at the end; the tasks' containers are removed by their exact task ids.

Needs the real Docker engine: skipped without it on a developer's machine, failed
under ``CI=true``.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.e2e.tes_support import TesHttp, remove_task_containers
from tests.helpers import DEADLINE_S, DaemonProcess
from tests.services import PYTHON_IMAGE, require

# What these check (the executors' network) does not depend on the store engine.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]


@dataclass
class Setup(TesHttp):
    network: str

    def run(self, params: dict[str, str]) -> dict[str, Any]:
        """Create a task listing its network interfaces; wait for its end (FULL)."""
        doc = {
            "executors": [{"image": PYTHON_IMAGE, "command": ["ls", "/sys/class/net"]}],
            "resources": {"backend_parameters": params},
        }
        return self.wait_state(self.create(doc))


def interfaces(task: dict[str, Any]) -> set[str]:
    assert task["state"] == "COMPLETE", task
    return set(task["logs"][0]["logs"][0]["stdout"].split())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require("docker")
    base = tmp_path_factory.mktemp("tes-network")
    network = f"jftest-{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "network", "create", network], capture_output=True, check=True)
    try:
        config = {
            "node": {"cores": 8},
            "runners": {"local": {"slots": 8}, "docker": {"enabled": True, "slots": 8}},
            "destinations": {
                "local": {"runner": "local"},
                "dock": {"runner": "docker", "image": PYTHON_IMAGE},
            },
            "tes": {"enabled": True, "destination": "dock", "docker_networks": [network]},
        }
        setup = Setup(DaemonProcess(base / "data", config).start(), network)
        try:
            yield setup
        finally:
            setup.daemon.stop()
            remove_task_containers(setup.created)
    finally:
        subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)


def test_docker_network__allowed__the_executor_joins_it(setup: Setup) -> None:
    task = setup.run({"docker_network": setup.network})

    assert "lo" in interfaces(task) and interfaces(task) - {"lo"}, task["logs"][0]["logs"]
    assert task["resources"]["backend_parameters"] == {"docker_network": setup.network}
    assert not any("ignored" in line for line in task["logs"][0]["system_logs"])


def test_docker_network__not_given__the_executor_has_loopback_only(setup: Setup) -> None:
    assert interfaces(setup.run({})) == {"lo"}


def test_docker_network__not_allowed__ignored_with_a_system_log_line(setup: Setup) -> None:
    task = setup.run({"docker_network": "bridge"})

    assert interfaces(task) == {"lo"}
    assert (
        "backend_parameters" not in task["resources"] or not task["resources"]["backend_parameters"]
    )
    assert (
        "backend parameters ignored (not supported): docker_network"
        in task["logs"][0]["system_logs"]
    )


def test_service_info__lists_docker_network_once_a_network_is_allowed(setup: Setup) -> None:
    response = requests.get(setup.daemon.url + "/ga4gh/tes/v1/service-info", timeout=DEADLINE_S)
    assert response.json()["tesResources_backend_parameters"] == ["destination", "docker_network"]
