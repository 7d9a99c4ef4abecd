"""The daemon's Docker image (``Dockerfile``), built from the local base image and run.

One container per module, on a random port of 127.0.0.1 and a named volume of its
own: ready, reachable, a job submitted through it runs and its output downloads, the
health check turns healthy, everything runs as the image's unprivileged user, and the
volume keeps the store, the key and the job's files for the next container. The
container and the volume are removed by id and name at the end, even on failure.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.docker_image import CONTAINER_PORT, build_image
from tests.helpers import DAEMON_LOGS, DEADLINE_S, JOB_SCRIPTS, Client, note_secrets, wait_for
from tests.services import require

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(1200)]

#: The image's user (Dockerfile: ARG UID).
IMAGE_UID = 10001
DATA = "/var/lib/jobferry"


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=2 * DEADLINE_S)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout.strip()


@dataclass
class Container:
    """A container of the image, with the volume it was given."""

    image: str
    volume: str
    log_path: Path
    ids: list[str] = field(default_factory=list)
    url: str = ""

    def start(self) -> Container:
        cid = docker(
            "run", "--detach", "--init",
            "--publish", f"127.0.0.1::{CONTAINER_PORT}",
            "--volume", f"{self.volume}:{DATA}",
            "--label", "jobferry-test=docker-image",
            self.image,
        )  # fmt: skip
        self.ids.append(cid)
        port = docker("port", cid, str(CONTAINER_PORT)).splitlines()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    @property
    def id(self) -> str:
        return self.ids[-1]

    def wait_ready(self) -> dict[str, object]:
        def ready() -> dict[str, object] | None:
            state = docker("inspect", "-f", "{{.State.Status}}", self.id)
            assert state in ("created", "running"), f"container {state}: {self.logs()}"
            try:
                answer = requests.get(self.url + "/readyz", timeout=5)
            except requests.ConnectionError:
                return None
            return answer.json() if answer.status_code == 200 else None

        return wait_for("the container's /readyz", ready, 2 * DEADLINE_S)

    def exec(self, *argv: str) -> str:
        return docker("exec", self.id, *argv)

    def logs(self) -> str:
        done = subprocess.run(
            ["docker", "logs", self.id], capture_output=True, text=True, timeout=DEADLINE_S
        )
        return done.stdout + done.stderr

    def remove(self) -> None:
        """Keep each container's log (the secrets watch reads it), then remove it."""
        with open(self.log_path, "a") as log:
            for cid in self.ids:
                done = subprocess.run(
                    ["docker", "logs", cid], capture_output=True, text=True, timeout=DEADLINE_S
                )
                log.write(done.stdout + done.stderr)
                docker("rm", "--force", "--volumes", cid, check=False)
        DAEMON_LOGS.add(self.log_path)
        docker("volume", "rm", "--force", self.volume, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    require("docker")
    tag, seconds = build_image()
    print(f"image {tag}: {'reused' if seconds == 0 else f'built in {seconds:.1f}s'}")
    return tag


@pytest.fixture(scope="module")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    volume = f"jobferry-test-{uuid.uuid4().hex[:12]}"
    docker("volume", "create", volume)
    log_path = tmp_path_factory.mktemp("docker-image") / "container.log"
    box = Container(image, volume, log_path)
    try:
        yield box.start()
    finally:
        box.remove()


def admin_of(box: Container) -> Client:
    key = box.exec("cat", f"{DATA}/admin-api-key").strip()
    note_secrets(key)
    return Client(box.url, key)


def test_image__is_ready_on_its_published_port_with_only_the_local_runner(
    container: Container,
) -> None:
    ready = container.wait_ready()
    assert ready["status"] == "ready", ready
    checks = ready["checks"]
    assert isinstance(checks, dict)
    assert "docker" not in checks and "slurm" not in checks, checks
    health = requests.get(container.url + "/healthz", timeout=DEADLINE_S)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_image__runs_a_job_submitted_through_it_and_serves_its_output(
    container: Container,
) -> None:
    container.wait_ready()
    admin = admin_of(container)
    admin.add_script("behave", JOB_SCRIPTS / "behave.py")
    text = b"carried through a container\n"
    job_id = admin.submit("behave", "--infile doc", files={"doc": ("doc.txt", text)})
    details = admin.wait(job_id, timeout_s=2 * DEADLINE_S)
    assert details["status"] == "completed", details
    # The job ran as the image's user, in the volume.
    assert f"uid {IMAGE_UID} " in details["stdout"], details["stdout"]
    assets = {a["name"]: a for a in details["assets"]}
    assert {"copy.txt", "where.txt", "sub/count.txt"} <= set(assets), assets
    where = admin.get(_path(assets["where.txt"]["url"]))
    assert where.status_code == 200 and where.text.startswith(f"{DATA}/jobs/"), where.text
    copy = admin.get(_path(assets["copy.txt"]["url"]))
    assert copy.status_code == 200 and copy.content == text
    assert hashlib.sha256(copy.content).hexdigest() == assets["copy.txt"]["sha256"]


def test_image__health_check_turns_healthy_and_nothing_runs_as_root(
    container: Container,
) -> None:
    container.wait_ready()
    config = json.loads(docker("inspect", "-f", "{{json .Config}}", container.id))
    assert config["User"] == "jobferry" and config["Healthcheck"]["Test"][0] == "CMD"
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    assert config["Volumes"] == {DATA: {}}
    assert config["Entrypoint"] == ["jobferry", "serve"]

    def healthy() -> bool:
        status = docker("inspect", "-f", "{{.State.Health.Status}}", container.id)
        assert status != "unhealthy", docker(
            "inspect", "-f", "{{json .State.Health}}", container.id
        )
        return status == "healthy"

    # The first check runs one interval (10 s) after the start.
    wait_for("a healthy health check", healthy, 3 * DEADLINE_S)
    # Every process of the container (init, daemon, health checks) has the image's uid.
    rows = docker("top", container.id, "-eo", "pid,uid,args").splitlines()[1:]
    assert any("jobferry serve" in row for row in rows), rows
    assert rows and all(row.split()[1] == str(IMAGE_UID) for row in rows), rows


def test_image__volume_keeps_store_key_and_files_for_the_next_container(
    container: Container,
) -> None:
    container.wait_ready()
    admin = admin_of(container)
    admin.add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
    job_id = admin.submit("wordcount", "--infile doc", files={"doc": ("doc.txt", b"a b c")})
    before = admin.wait(job_id, timeout_s=2 * DEADLINE_S)
    assert before["status"] == "completed", before
    docker("stop", "--time", str(int(DEADLINE_S)), container.id)
    # SIGTERM reached the daemon through the init, and it stopped cleanly.
    assert docker("inspect", "-f", "{{.State.ExitCode}}", container.id) == "0"
    container.start().wait_ready()
    again = admin_of(container)
    assert again.session.headers["Authorization"] == admin.session.headers["Authorization"]
    after = again.get(f"/api/jobs/v1/{job_id}/details/").json()
    assert after["status"] == "completed" and after["stdout"] == "counted 3 words\n"
    count = again.get(_path(after["assets"][0]["url"]))
    assert count.status_code == 200 and count.text == "3\n"


def _path(url: str) -> str:
    """The path of an asset URL (its host is the container's view of the request)."""
    return "/" + url.split("//", 1)[1].split("/", 1)[1]
