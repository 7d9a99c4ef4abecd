"""The TES task program (``jobferry/runners/tes_task.py``) against the real Docker engine.

Each test writes a plan into its tmp_path and runs the program as a subprocess, as the
job wrapper would, then reads its exit status, state file and what it delivered. The
containers run as nobody (65534) from the local python image; names are unique per
test, and a test that starts a container it might leave behind removes it by name.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.services import PYTHON_IMAGE, require

pytestmark = [pytest.mark.timeout(180), pytest.mark.engine_independent]

PROGRAM = Path(__file__).resolve().parents[2] / "jobferry" / "runners" / "tes_task.py"
#: The interpreter of the task program (it must also run on Python 3.8: set this to check).
PYTHON = os.environ.get("JOBFERRY_TES_PYTHON", sys.executable)
USER = "65534:65534"


def py(code: str, **extra: Any) -> dict[str, Any]:
    """An executor running *code* in the image's python."""
    return {"image": PYTHON_IMAGE, "command": ["python3", "-c", code], **extra}


def sh(script: str, **extra: Any) -> dict[str, Any]:
    return {"image": PYTHON_IMAGE, "command": ["sh", "-c", script], **extra}


class Plan:
    """A plan in tmp_path: the task, its root, state file and confinement."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.files = tmp_path / "files"  # the one file root
        self.files.mkdir()
        self.name = f"jobferry-test-tes-{uuid.uuid4().hex[:10]}"
        self.http_hosts: list[str] = []

    def write(self, task: dict[str, Any]) -> Path:
        plan = {
            "task": task,
            "root": str(self.dir / "root"),
            "state_path": str(self.dir / "tes" / "state-1.json"),
            "runtime": {
                "command": ["docker"],
                "user": USER,
                "network": False,
                "cpus": 1,
                "memory_mb": 256,
                "name": self.name,
                "extra_args": [],
            },
            "file_roots": [str(self.files)],
            "http_hosts": self.http_hosts,
            "tail_bytes": 1024,
        }
        (self.dir / "tes").mkdir(exist_ok=True)
        path = self.dir / "tes" / "plan-1.json"
        path.write_text(json.dumps(plan))
        return path

    def run(self, task: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [PYTHON, str(PROGRAM), str(self.write(task))], capture_output=True, timeout=150
        )
        assert not done.stdout and not done.stderr, (done.stdout, done.stderr)
        return done.returncode, self.state()

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.dir / "tes" / "state-1.json").read_text())
        return state

    def url(self, *parts: str) -> str:
        return (self.files / Path(*parts)).as_uri()


@pytest.fixture
def plan(tmp_path: Path) -> Iterator[Plan]:
    require("docker")
    made = Plan(tmp_path)
    yield made
    names = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name={made.name}"], capture_output=True, text=True
    ).stdout.split()
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)


class Store(http.server.BaseHTTPRequestHandler):
    """GET answers what was PUT (or seeded) at a path; PUT stores the body."""

    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_PUT(self) -> None:  # noqa: N802
        self.files[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    handler = type("Handler", (Store,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def test_executors_share_a_volume_and_redirect_their_streams(plan: Plan) -> None:
    content = "".join(f"line {i:07d}\n" for i in range(10923))[: 128 * 1024]
    assert len(content) == 128 * 1024
    out = plan.url("out", "report.txt")
    code, state = plan.run(
        {
            "volumes": ["/vol"],
            "inputs": [{"path": "/in/big.txt", "content": content, "type": "FILE"}],
            "outputs": [{"path": "/out/report.txt", "url": out, "type": "FILE"}],
            "executors": [
                # Who, where, which networks, and whether an input may be written.
                sh(
                    "(id -u; pwd; echo $GREETING; ls /sys/class/net;"
                    " touch /in/big.txt 2>/dev/null && echo rw || echo ro) > /vol/facts",
                    workdir="/vol/work",
                    env={"GREETING": "hi there"},
                ),
                py(
                    "import sys; data = sys.stdin.read(); facts = open('/vol/facts').read();"
                    "print(len(data), data.splitlines()[-1], facts.split());"
                    "print('to stderr', file=sys.stderr)",
                    stdin="/in/big.txt",
                    stdout="/out/report.txt",
                ),
            ],
        }
    )
    assert (code, state["phase"]) == (0, "COMPLETE"), state
    report = (plan.files / "out" / "report.txt").read_text()
    last = content.splitlines()[-1]
    facts = ["65534", "/vol/work", "hi", "there", "lo", "ro"]  # nobody, no network
    assert report == f"131072 {last} {facts}\n"
    first, second = state["logs"]
    assert first["exit_code"] == second["exit_code"] == 0
    assert second["stdout"] == report  # the tail is kept although the stream went to a file
    assert second["stderr"] == "to stderr\n"
    assert state["outputs"] == [
        {"url": out, "path": "/out/report.txt", "size_bytes": str(len(report))}
    ]
    for stamp in (state["start_time"], state["end_time"], first["start_time"], first["end_time"]):
        assert stamp.endswith("Z") and "T" in stamp


def test_a_failed_executor_stops_the_rest_unless_its_error_is_ignored(plan: Plan) -> None:
    noisy = sh("head -c 3000 /dev/zero | tr '\\0' a >&2; echo bad >&2; exit 3")
    code, state = plan.run({"executors": [noisy, sh("echo never")]})
    assert (code, state["phase"]) == (1, "EXECUTOR_ERROR")
    tail = "a" * 1020 + "bad\n"  # the last tail_bytes (1024) of the stream
    assert [(log["exit_code"], log["stderr"]) for log in state["logs"]] == [(3, tail)]

    ignored = sh("exit 3", ignore_error=True)
    code, state = plan.run({"executors": [ignored, sh("echo after")]})
    assert (code, state["phase"]) == (0, "COMPLETE")
    assert [(log["exit_code"], log["stdout"]) for log in state["logs"]] == [(3, ""), (0, "after\n")]


def test_file_inputs_and_outputs_files_directories_and_wildcards(plan: Plan) -> None:
    tree = plan.files / "data"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("A")
    (plan.files / "elsewhere.txt").write_text("E")
    (tree / "link.txt").symlink_to(plan.files / "elsewhere.txt")  # inside the roots: copied
    (plan.files / "single.txt").write_text("S")
    code, state = plan.run(
        {
            "inputs": [
                {"path": "/in/data", "url": plan.url("data"), "type": "DIRECTORY"},
                {"path": "/in/single.txt", "url": plan.url("single.txt"), "type": "FILE"},
            ],
            "outputs": [
                {"path": "/work/tree", "url": plan.url("got", "tree"), "type": "DIRECTORY"},
                {
                    "path": "/work/w/*.txt",
                    "path_prefix": "/work/w/",
                    "url": plan.url("got", "w") + "/",
                    "type": "FILE",
                },
            ],
            "executors": [
                sh(
                    "cp -r /in/data/. /work/tree/ && cat /in/single.txt > /work/tree/s.txt && "
                    "mkdir -p /work/w && echo 1 > /work/w/one.txt && echo 22 > /work/w/two.txt && "
                    "echo no > /work/w/three.log && ln -s /etc/passwd /work/tree/leak && "
                    "mkdir -p /work/tree/empty/deeper"
                )
            ],
        }
    )
    assert (code, state["phase"]) == (0, "COMPLETE"), state
    got = plan.files / "got"
    files = sorted(str(p.relative_to(got)) for p in got.rglob("*") if not p.is_dir())
    assert files == ["tree/link.txt", "tree/s.txt", "tree/sub/a.txt", "w/one.txt", "w/two.txt"]
    assert (got / "tree" / "link.txt").read_text() == "E"
    assert (got / "tree" / "empty" / "deeper").is_dir()  # directories, even empty ones
    assert (got / "w" / "two.txt").read_text() == "22\n"
    logs = {log["path"]: log for log in state["outputs"]}
    assert logs["/work/w/two.txt"] == {
        "url": plan.url("got", "w", "two.txt"),
        "path": "/work/w/two.txt",
        "size_bytes": "3",
    }
    assert logs["/work/tree/sub/a.txt"]["url"] == plan.url("got", "tree", "sub", "a.txt")
    assert len(logs) == 5  # the container's symlink was not delivered


@pytest.mark.parametrize("where", ["outside", "dotdot", "symlink", "dir-symlink"])
def test_a_file_url_escaping_the_roots_is_a_system_error(
    plan: Plan, tmp_path: Path, where: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    (plan.files / "data").mkdir()
    (plan.files / "data" / "escape").symlink_to(secret)
    url, kind = {
        "outside": (secret.as_uri(), "FILE"),
        "dotdot": (plan.url("data") + "/../../secret.txt", "FILE"),
        "symlink": (plan.url("data", "escape"), "FILE"),
        "dir-symlink": (plan.url("data"), "DIRECTORY"),
    }[where]
    code, state = plan.run(
        {"inputs": [{"path": "/in/x", "url": url, "type": kind}], "executors": [sh("true")]}
    )
    assert (code, state["phase"], state["logs"]) == (2, "SYSTEM_ERROR", [])
    assert "outside the allowed file roots" in state["system_logs"][0]
    assert not list((tmp_path / "root").rglob("secret*"))


@pytest.mark.parametrize(
    "output, message",
    [
        ({"path": "/out/none.txt", "url": "DEST"}, "/out/none.txt is missing"),
        ({"path": "/out/leak", "url": "DEST"}, "/out/leak is missing"),  # a symlink
        ({"path": "/out/fifo", "url": "DEST"}, "/out/fifo is missing"),  # would block
        ({"path": "/out/ok", "url": "file:///etc/jobferry-test-leak"}, "outside the allowed"),
    ],
)
def test_an_undeliverable_output_is_a_system_error(
    plan: Plan, output: dict[str, str], message: str
) -> None:
    output = {**output, "url": output["url"].replace("DEST", plan.url("leak")), "type": "FILE"}
    code, state = plan.run(
        {
            "outputs": [output],
            "executors": [sh("echo ok > /out/ok; ln -s /etc/passwd /out/leak; mkfifo /out/fifo")],
        }
    )
    assert (code, state["phase"]) == (2, "SYSTEM_ERROR")
    assert message in state["system_logs"][0]
    assert state["outputs"] == []
    assert not os.path.exists("/etc/jobferry-test-leak")
    assert not (plan.files / "leak").exists()


def test_a_stream_path_the_container_made_a_symlink_is_refused(plan: Plan, tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"  # a host path: the second executor must not write it
    code, state = plan.run(
        {
            "volumes": ["/vol"],
            "executors": [
                sh(f"ln -s {target} /vol/out.txt"),
                sh("echo escaped", stdout="/vol/out.txt"),
            ],
        }
    )
    assert (code, state["phase"], len(state["logs"])) == (2, "SYSTEM_ERROR", 1)
    assert "executors[1].stdout /vol/out.txt" in state["system_logs"][0]
    assert not target.exists()


def test_http_inputs_and_outputs_go_only_to_allowed_hosts(
    plan: Plan, server: tuple[str, dict[str, bytes]]
) -> None:
    host, files = server
    files["/in.txt"] = b"fetched"
    plan.http_hosts = [host]
    code, state = plan.run(
        {
            "inputs": [{"path": "/in/in.txt", "url": f"http://{host}/in.txt", "type": "FILE"}],
            "outputs": [{"path": "/out/o.txt", "url": f"http://{host}/put/o.txt", "type": "FILE"}],
            "executors": [sh("tr a-z A-Z < /in/in.txt > /out/o.txt")],
        }
    )
    assert (code, state["phase"]) == (0, "COMPLETE"), state
    assert files["/put/o.txt"] == b"FETCHED"
    assert state["outputs"][0]["size_bytes"] == "7"

    plan.http_hosts = ["127.0.0.1:1"]
    task = {"inputs": [{"path": "/in/x", "url": f"http://{host}/in.txt"}], "executors": [sh("")]}
    code, state = plan.run(task)
    assert (code, state["phase"]) == (2, "SYSTEM_ERROR")
    assert f"host '{host}' is not an allowed http host" in state["system_logs"][0]


def test_an_unsupported_scheme_is_a_system_error_naming_it(plan: Plan) -> None:
    task = {"inputs": [{"path": "/in/x", "url": "s3://bucket/key"}], "executors": [sh("true")]}
    code, state = plan.run(task)
    assert (code, state["phase"], state["logs"]) == (2, "SYSTEM_ERROR", [])
    assert "staging in s3://bucket/key" in state["system_logs"][0]
    assert "scheme 's3' is not supported" in state["system_logs"][0]


def test_sigterm_removes_the_running_container_and_exits_143(plan: Plan) -> None:
    path = plan.write({"executors": [sh("sleep 300")]})
    # In a process group of its own, signalled as a whole as the job wrapper's is: the
    # container CLI gets the SIGTERM too.
    proc = subprocess.Popen([PYTHON, str(PROGRAM), str(path)], start_new_session=True)
    container = f"{plan.name}-0"

    def running() -> bool:
        ps = ["docker", "ps", "-q", "--filter", f"name={container}", "--filter", "status=running"]
        return bool(subprocess.run(ps, capture_output=True, text=True).stdout.strip())

    try:
        wait_for("the executor's container", running, 60)
        assert plan.state()["phase"] == "RUNNING"
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = plan.state()
    assert state["phase"] == "CANCELED" and state["end_time"]
    assert len(state["logs"]) == 1  # the killed executor's log is kept
    ps = ["docker", "ps", "-aq", "--filter", f"name={container}"]
    assert subprocess.run(ps, capture_output=True, text=True).stdout.strip() == ""


def test_each_attempt_writes_its_own_state_file_and_names_its_own_containers(
    plan: Plan,
) -> None:
    """``{attempt}`` in the plan's state path and container name is ``$JOBFERRY_ATTEMPT``
    (the daemon sets it): a requeued task's attempt 2 leaves attempt 1's file alone,
    and its containers cannot clash with attempt 1's (which may still run)."""
    waits = "until [ -e /shared/go ]; do sleep 0.1; done; echo two"
    path = plan.write({"executors": [sh(waits)], "volumes": ["/shared"]})
    body = json.loads(path.read_text())
    body["state_path"] = str(plan.dir / "tes" / "state-{attempt}.json")
    body["runtime"]["name"] = plan.name + "-{attempt}"
    path.write_text(json.dumps(body))
    first = plan.dir / "tes" / "state-1.json"
    first.write_text('{"phase": "RUNNING"}')  # attempt 1's, cut off by its node's death
    env = {**os.environ, "JOBFERRY_ATTEMPT": "2"}
    proc = subprocess.Popen([PYTHON, str(PROGRAM), str(path)], env=env)
    container = f"{plan.name}-2-0"

    def running() -> bool:
        ps = ["docker", "ps", "-q", "--filter", f"name=^{container}$"]
        return bool(subprocess.run(ps, capture_output=True, text=True).stdout.strip())

    try:
        wait_for("attempt 2's container", running, 60)
        (plan.dir / "root" / "shared" / "go").touch()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    second = json.loads((plan.dir / "tes" / "state-2.json").read_text())
    assert second["phase"] == "COMPLETE" and second["logs"][0]["stdout"] == "two\n"
    assert json.loads(first.read_text()) == {"phase": "RUNNING"}
    assert not (plan.dir / "tes" / "state-{attempt}.json").exists()


def test_a_later_attempt_removes_earlier_attempts_containers_by_exact_name_and_says_where_it_ran(
    plan: Plan,
) -> None:
    """Attempt 3 removes the containers attempts 1 and 2 left (their program outlived its
    daemon) before it stages anything, and only those: a name that merely begins like
    one is another's. Its state file says on which node and host it ran."""
    path = plan.write({"executors": [sh("echo one"), sh("echo two")]})
    body = json.loads(path.read_text())
    body["state_path"] = str(plan.dir / "tes" / "state-{attempt}.json")
    body["runtime"]["name"] = plan.name + "-{attempt}"
    path.write_text(json.dumps(body))
    left = [f"{plan.name}-1-0", f"{plan.name}-2-1"]
    other = f"{plan.name}-1-0-other"
    for name in [*left, other]:
        run = ["docker", "run", "-d", "--name", name, "--network", "none", "--user", USER]
        subprocess.run([*run, PYTHON_IMAGE, "sleep", "300"], capture_output=True, check=True)
    env = {**os.environ, "JOBFERRY_ATTEMPT": "3", "JOBFERRY_NODE": "n7"}
    done = subprocess.run([PYTHON, str(PROGRAM), str(path)], env=env, timeout=150)
    assert done.returncode == 0

    def exists(name: str) -> bool:
        ps = ["docker", "ps", "-aq", "--filter", f"name=^{name}$"]
        return bool(subprocess.run(ps, capture_output=True, text=True).stdout.strip())

    assert not any(exists(name) for name in left) and exists(other)
    state = json.loads((plan.dir / "tes" / "state-3.json").read_text())
    assert state["phase"] == "COMPLETE"
    assert f"removed {', '.join(left)}: earlier attempts' containers" in state["system_logs"]
    assert state["metadata"] == {"node": "n7", "host": os.uname().nodename}


def test_a_first_attempt_removes_nothing(plan: Plan) -> None:
    code, state = plan.run({"executors": [sh("echo one")]})
    assert code == 0 and state["system_logs"] == []
    assert state["metadata"]["host"] == os.uname().nodename
