"""TES backend parameters on the real single-node Slurm: ``slurm_partition`` and
``slurm_qos`` reach sbatch, and what Slurm then reports.

One daemon serves the module with a Slurm destination (``container: {runtime:
docker}``) whose own partition does not exist (``jf-nosuch-...``): a task that
names the real partition (``debug``, this cluster's only one) with
``slurm_partition`` runs there, which only the parameter can have made happen;
one without the parameter, or naming an unknown partition, is refused by sbatch
and ends ``SYSTEM_ERROR`` with sbatch's reason in its system logs.

``slurm_qos``: this Slurm keeps no accounting (``accounting_storage/none``, no
slurmdbd). sbatch then accepts any ``--qos`` and ignores it: the job runs and Slurm
reports its QOS as ``(null)``. The test asserts that, or the qos itself where a
Slurm with accounting records it.

Needs the real Docker engine and Slurm: skipped without them on a developer's
machine, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.tes_support import TesHttp, remove_task_containers
from tests.helpers import DaemonProcess
from tests.services import PYTHON_IMAGE, require

# What these check (sbatch's options) does not depend on the store engine: SQLite only.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

#: The cluster's partition (``sinfo``: the single-node Slurm has only ``debug``).
PARTITION = "debug"


@dataclass
class Setup(TesHttp):
    missing: str  # the destination's partition, which Slurm does not have

    def submit(self, params: dict[str, str]) -> str:
        """Create an ``echo`` task with these backend parameters."""
        return self.create(
            {
                "executors": [{"image": PYTHON_IMAGE, "command": ["echo", "ran"]}],
                "resources": {"ram_gb": 0.25, "backend_parameters": params},
            }
        )

    def slurm_job(self, task_id: str) -> dict[str, str]:
        """What Slurm itself reports of the task's batch job (``scontrol show job``:
        kept for MinJobAge after its end), as key=value pairs."""
        shown = self.daemon.cli("job", "show", task_id, "--json").stdout
        slurm_id = json.loads(shown)["external_id"]
        assert slurm_id, shown
        text = subprocess.run(
            ["scontrol", "show", "job", str(slurm_id)], capture_output=True, text=True, check=True
        ).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require("docker")
    require("slurm")
    base = tmp_path_factory.mktemp("tes-slurm-params")
    missing = f"jf-nosuch-{uuid.uuid4().hex[:8]}"
    config = {
        "node": {"cores": 8},
        "runners": {
            "local": {"slots": 8},
            "docker": {"enabled": True, "slots": 8},
            "slurm": {"enabled": True, "poll_interval_s": 1.0},
        },
        "destinations": {
            "local": {"runner": "local"},
            "cluster": {
                "runner": "slurm",
                "partition": missing,
                "container": {"runtime": "docker"},
            },
        },
        "tes": {"enabled": True, "destination": "cluster"},
    }
    setup = Setup(DaemonProcess(base / "data", config).start(), missing)
    try:
        yield setup
    finally:
        setup.daemon.stop()
        remove_task_containers(setup.created)  # only this module's tasks' containers


def test_slurm_partition__overrides_the_destinations_and_slurm_runs_the_job_there(
    setup: Setup,
) -> None:
    task_id = setup.submit({"slurm_partition": PARTITION})
    task = setup.wait_state(task_id)

    assert task["state"] == "COMPLETE", task
    assert task["logs"][0]["logs"][0]["stdout"] == "ran\n"
    assert task["resources"]["backend_parameters"] == {"slurm_partition": PARTITION}
    assert setup.slurm_job(task_id)["Partition"] == PARTITION


@pytest.mark.parametrize("params", [{}, {"slurm_partition": "jf-unknown-part"}])
def test_unknown_partition__sbatch_refuses_it_and_the_task_ends_system_error(
    setup: Setup, params: dict[str, str]
) -> None:
    task_id = setup.submit(params)  # none: the destination's partition, missing too
    task = setup.wait_state(task_id)

    assert task["state"] == "SYSTEM_ERROR", task
    reasons = "\n".join(task["logs"][-1]["system_logs"])
    assert "invalid partition" in reasons.casefold(), reasons


def test_slurm_qos__reaches_sbatch__which_without_accounting_accepts_and_ignores_it(
    setup: Setup,
) -> None:
    task_id = setup.submit({"slurm_partition": PARTITION, "slurm_qos": "jfqos1"})
    task = setup.wait_state(task_id)

    assert task["state"] == "COMPLETE", task
    assert task["resources"]["backend_parameters"]["slurm_qos"] == "jfqos1"
    # accounting_storage/none: no QOS is recorded; with accounting, it would be ours.
    assert setup.slurm_job(task_id)["QOS"] in ("(null)", "jfqos1")


def test_slurm_value_that_is_not_a_plain_word__is_400_naming_the_field(setup: Setup) -> None:
    doc = {
        "executors": [{"image": PYTHON_IMAGE, "command": ["true"]}],
        "resources": {"backend_parameters": {"slurm_qos": "--wrap=id"}},
    }
    response = setup.call("POST", "/tasks", json=doc)
    assert response.status_code == 400, response.text
    assert "resources.backend_parameters.slurm_qos" in response.text
