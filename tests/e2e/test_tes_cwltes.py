"""cwl-tes, a CWL runner whose tasks go to a GA4GH TES server, against a real daemon.

cwl-tes (PyPI) needs Python 3.8, so it lives in its own venv (``scripts/services
cwl-tes`` makes it; ``CWLTES_VENV`` in tests/services.py says where). It runs a
one-step CWL CommandLineTool on the shared filesystem: it sends the input as a
``file://`` URL, its stdout and the whole working directory as ``file://`` outputs
(a FILE and a DIRECTORY), into a directory the daemon's ``tes.file_roots`` allows.
The tool's image is the local test image: ``docker run`` pulls only a missing image,
and no registry is reachable, so a pull would fail the task.

cwl-tes 0.3 sends a token only as a JWT it verifies itself against an RS256 public
key (``--token``/``--token-public-key``), which a jobferry API key is not. Its TES
client (py-tes, through requests) does read a netrc file, though: the test gives it
one (``NETRC``, mode 0600) with the user's name and API key, which jobferry takes as
HTTP Basic credentials. So the key is not on any command line and the daemon's
authentication stays as it is.

The daemon's store plays no part in what is checked: SQLite only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.tes_support import remove_task_containers, task_job_ids
from tests.helpers import DEADLINE_S, DaemonProcess
from tests.services import PYTHON_IMAGE, cwltes_command, require

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(600)]

#: A one-step tool on an input File: its line count captured from stdout (a FILE
#: output of the task), and the sorted lines written to the working directory, which
#: reaches cwl-tes only through the task's DIRECTORY output of that directory. The
#: image is the local test image (never pulled: the Docker engine has it).
SORT_TOOL = {
    "cwlVersion": "v1.0",
    "class": "CommandLineTool",
    "baseCommand": ["sh", "-c", 'sort "$0" > sorted.txt && wc -l < "$0"'],
    "requirements": {"DockerRequirement": {"dockerPull": PYTHON_IMAGE}},
    "inputs": {"words": {"type": "File", "inputBinding": {"position": 1}}},
    "outputs": {
        "count": {"type": "stdout"},
        "sorted": {"type": "File", "outputBinding": {"glob": "sorted.txt"}},
    },
    "stdout": "count.txt",
}


#: The same tool failing in its container: cwl-tes must see the task's EXECUTOR_ERROR.
FAILING_TOOL = {**SORT_TOOL, "baseCommand": ["sh", "-c", "echo no >&2; exit 3"]}


@dataclass
class Setup:
    daemon: DaemonProcess
    #: Under the daemon's tes.file_roots: inputs, cwl-tes's temporary and output dirs.
    shared: Path
    netrc: Path
    key: str

    def tasks(self) -> list[dict[str, Any]]:
        """The user's TES tasks, newest first (BASIC view), asked with Basic credentials."""
        response = requests.get(
            self.daemon.url + "/ga4gh/tes/v1/tasks",
            params={"view": "BASIC"},
            auth=("carol", self.key),
            timeout=DEADLINE_S,
        )
        assert response.status_code == 200, response.text
        return list(response.json()["tasks"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require("docker")
    require("cwl-tes")
    base = tmp_path_factory.mktemp("cwltes")
    shared = base / "shared"
    shared.mkdir()
    config = {
        "node": {"cores": 4},
        "runners": {"local": {"slots": 4}, "docker": {"enabled": True, "slots": 4}},
        "destinations": {
            "local": {"runner": "local"},
            "dock": {"runner": "docker", "image": PYTHON_IMAGE},
        },
        "tes": {"enabled": True, "destination": "dock", "file_roots": [str(shared)]},
    }
    daemon = DaemonProcess(base / "data", config).start()
    try:
        key = daemon.cli("user", "create", "carol").stdout.strip()
        netrc = base / "netrc"
        netrc.touch(mode=0o600)
        netrc.write_text(f"machine 127.0.0.1 login carol password {key}\n")
        yield Setup(daemon, shared, netrc, key)
    finally:
        ids = task_job_ids(daemon)
        daemon.stop()
        remove_task_containers(ids)


def run_cwltes(
    setup: Setup, name: str, tool: dict[str, Any], netrc: Path | None = None
) -> tuple[Path, Any]:
    """cwl-tes on *tool* with a three-line input file, in its own directory under the
    shared one, with carol's credentials (or *netrc*'s): that directory, and cwl-tes's
    finished process."""
    here = setup.shared / name
    for sub in ("tmp", "work", "out"):
        (here / sub).mkdir(parents=True)
    (here / "tool.cwl").write_text(json.dumps(tool))
    (here / "words.txt").write_text("pear\napple\nfig\n")
    (here / "job.json").write_text(
        json.dumps({"words": {"class": "File", "path": str(here / "words.txt")}})
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(here),
        "NETRC": str(netrc or setup.netrc),  # a name and API key, for requests
        "NO_PROXY": "127.0.0.1",
    }
    argv = [
        *cwltes_command(),
        "--tes",
        setup.daemon.url,
        # Its temporary and intermediate output dirs: the file:// URLs of the task's
        # outputs name them, so they must be under tes.file_roots.
        "--tmpdir-prefix",
        f"{here}/tmp/",
        "--tmp-outdir-prefix",
        f"{here}/work/",
        "--outdir",
        str(here / "out"),
        str(here / "tool.cwl"),
        str(here / "job.json"),
    ]
    result = subprocess.run(
        argv, cwd=here, env=env, capture_output=True, text=True, timeout=4 * DEADLINE_S
    )
    return here, result


def test_cwltes__runs_a_one_step_tool_with_a_file_input_and_file_outputs(setup: Setup) -> None:
    here, result = run_cwltes(setup, "sort", SORT_TOOL)
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)  # cwl-tes's output object
    assert set(outputs) == {"count", "sorted"}
    for name, content in (("count", "3\n"), ("sorted", "apple\nfig\npear\n")):
        out = outputs[name]
        assert out["class"] == "File" and out["basename"] == f"{name}.txt"
        assert out["location"] == f"file://{here}/out/{name}.txt"
        assert out["size"] == len(content)
        assert out["checksum"] == "sha1$" + hashlib.sha1(content.encode()).hexdigest()
        assert (here / "out" / f"{name}.txt").read_text() == content

    # It ran as carol's task, to COMPLETE, in the tool's image.
    task = next(t for t in setup.tasks() if t["name"] == "tool.cwl")
    assert task["state"] == "COMPLETE"
    assert task["executors"][0]["image"] == PYTHON_IMAGE
    assert {o["type"] for o in task["outputs"]} == {"FILE", "DIRECTORY"}


def test_cwltes__a_tool_failing_in_its_container_fails_the_run(setup: Setup) -> None:
    before = {t["id"] for t in setup.tasks()}
    _, result = run_cwltes(setup, "fails", FAILING_TOOL)
    assert result.returncode != 0
    assert "permanentFail" in result.stderr, result.stderr
    (task,) = [t for t in setup.tasks() if t["id"] not in before]
    assert task["state"] == "EXECUTOR_ERROR"
    assert task["logs"][0]["logs"][0]["exit_code"] == 3


def test_cwltes__a_wrong_api_key_is_refused_before_any_task(setup: Setup) -> None:
    wrong = setup.netrc.with_name("netrc-wrong")
    wrong.touch(mode=0o600)
    wrong.write_text("machine 127.0.0.1 login carol password jf_not-a-key\n")
    before = setup.tasks()
    _, result = run_cwltes(setup, "refused", SORT_TOOL, netrc=wrong)
    assert result.returncode != 0
    assert "401" in result.stderr, result.stderr
    assert setup.tasks() == before
