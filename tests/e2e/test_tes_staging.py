"""TES staging end to end with py-tes: http(s) inputs and outputs (a server of the test's
own on 127.0.0.1, the one host in ``tes.http_hosts``), wildcard outputs with
``path_prefix``, DIRECTORY inputs and outputs, and the schemes and hosts that must end
a task ``SYSTEM_ERROR`` rather than be fetched.

The task program's own integration tests (tests/integration/test_tes_task.py) cover
each rule in detail; these check that the daemon's face, plan and runner carry them
through for a real client.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tes

from tests.e2e.tes_support import remove_task_containers, task_job_ids
from tests.helpers import DEADLINE_S, DaemonProcess
from tests.services import PYTHON_IMAGE, require

# What these check (staging, runners) does not depend on the store engine: SQLite only.
pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

TIMEOUT = int(DEADLINE_S)


class _Files(http.server.BaseHTTPRequestHandler):
    """GET serves ``served/``; PUT stores the body under ``put/`` (same relative path)."""

    root: Path

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.root / "served" / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        target = self.root / "put" / self.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.rfile.read(length))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Setup:
    daemon: DaemonProcess
    client: tes.HTTPClient
    files: Path  # the one tes.file_roots directory
    web: Path  # the HTTP server's root: served/ and put/
    web_url: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require("docker")
    base = tmp_path_factory.mktemp("tes-staging")
    files, web = base / "files", base / "web"
    files.mkdir()
    (web / "served").mkdir(parents=True)
    handler = type("Files", (_Files,), {"root": web})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"127.0.0.1:{server.server_address[1]}"
    config = {
        "node": {"cores": 4},
        "runners": {"local": {"slots": 4}, "docker": {"enabled": True, "slots": 4}},
        "destinations": {
            "local": {"runner": "local"},
            # No network for the executors: the task program stages on the host.
            "dock": {"runner": "docker", "image": PYTHON_IMAGE},
        },
        "tes": {
            "enabled": True,
            "destination": "dock",
            "file_roots": [str(files)],
            "http_hosts": [host],
        },
    }
    daemon = DaemonProcess(base / "data", config).start()
    try:
        client = tes.HTTPClient(daemon.url, token=daemon.admin_key, timeout=TIMEOUT)
        yield Setup(daemon, client, files, web, f"http://{host}")
    finally:
        ids = task_job_ids(daemon)
        daemon.stop()
        server.shutdown()
        server.server_close()
        remove_task_containers(ids)


def run(setup: Setup, doc: tes.Task) -> tes.Task:
    task_id = setup.client.create_task(doc)
    setup.client.wait(task_id, timeout=TIMEOUT)
    return setup.client.get_task(task_id, view="FULL")


def test_http_input_and_output__fetched_from_and_put_to_an_allowed_host(setup: Setup) -> None:
    (setup.web / "served" / "in.txt").write_text("over http\n")
    full = run(
        setup,
        tes.Task(
            name="http",
            inputs=[tes.Input(path="/work/in.txt", url=f"{setup.web_url}/in.txt")],
            outputs=[tes.Output(path="/work/out/up.txt", url=f"{setup.web_url}/results/up.txt")],
            volumes=["/work/out"],
            executors=[
                tes.Executor(
                    image=PYTHON_IMAGE,
                    command=["sh", "-c", "tr a-z A-Z < /work/in.txt > /work/out/up.txt"],
                )
            ],
        ),
    )
    assert full.state == "COMPLETE", full.logs
    assert (setup.web / "put" / "results" / "up.txt").read_text() == "OVER HTTP\n"
    (delivered,) = full.logs[0].outputs
    assert delivered.url == f"{setup.web_url}/results/up.txt"
    assert int(delivered.size_bytes) == 10  # py-tes reads the wire's string as a number


def test_wildcard_and_directory_outputs_and_a_directory_input(setup: Setup) -> None:
    tree = setup.files / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    (tree / "sub" / "b.txt").write_text("b\n")
    script = (
        "mkdir -p /out/parts /out/report/deep && cp -r /in/tree/. /out/report/deep/ && "
        "for n in 1 2 3; do echo part $n > /out/parts/part$n.csv; done && "
        "echo skip > /out/parts/notes.txt"
    )
    full = run(
        setup,
        tes.Task(
            name="trees",
            inputs=[tes.Input(path="/in/tree", url=f"file://{tree}", type="DIRECTORY")],
            outputs=[
                tes.Output(
                    path="/out/parts/*.csv",
                    path_prefix="/out/parts/",
                    url=f"file://{setup.files}/csv/",
                ),
                tes.Output(
                    path="/out/report", url=f"file://{setup.files}/report", type="DIRECTORY"
                ),
            ],
            volumes=["/out"],
            executors=[tes.Executor(image=PYTHON_IMAGE, command=["sh", "-c", script])],
        ),
    )
    assert full.state == "COMPLETE", (full.logs[0].system_logs, full.logs[0].logs)
    assert sorted(p.name for p in (setup.files / "csv").iterdir()) == [
        "part1.csv",
        "part2.csv",
        "part3.csv",
    ]
    assert (setup.files / "csv" / "part2.csv").read_text() == "part 2\n"
    assert (setup.files / "report" / "deep" / "sub" / "b.txt").read_text() == "b\n"
    assert (setup.files / "report" / "deep" / "a.txt").read_text() == "a\n"
    delivered = {o.url for o in full.logs[0].outputs}
    assert f"file://{setup.files}/csv/part1.csv" in delivered


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("s3://bucket/key.txt", "s3"),
        ("http://127.0.0.2:9/forbidden.txt", "127.0.0.2:9"),
    ],
    ids=["unstaged-scheme", "host-not-allowed"],
)
def test_an_input_the_server_may_not_fetch_ends_system_error_naming_why(
    setup: Setup, url: str, named: str
) -> None:
    full = run(
        setup,
        tes.Task(
            name="refused",
            inputs=[tes.Input(path="/in/x.txt", url=url)],
            executors=[tes.Executor(image=PYTHON_IMAGE, command=["cat", "/in/x.txt"])],
        ),
    )
    assert full.state == "SYSTEM_ERROR"
    assert any(named in line for line in full.logs[0].system_logs), full.logs[0].system_logs
    assert not full.logs[0].logs  # no executor ran
