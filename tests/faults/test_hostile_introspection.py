"""Reading a script's parser runs its top-level code: that code must be harmless.

Guards issue #10 item 8: introspection ran a registered script's top-level code as
root with full filesystem and network access, and a child that called ``setsid()``
survived it. Each test registers a hostile script on a real daemon and checks the
confinement from outside: nothing written, no connection made, no process left.
"""

from __future__ import annotations

import glob
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.faults._introspection_helpers import kill_all, need_namespaces, processes_with
from tests.helpers import DaemonProcess, eventually

pytestmark = [pytest.mark.timeout(300), pytest.mark.engine_independent]

DEADLINE_S = 60.0

HOSTILE = """
import argparse, os, socket, time

def attack():
    for path in {paths!r}:
        try:
            with open(path, "w") as out:
                out.write("written by a script being introspected")
        except OSError:
            pass
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"hello")
    except OSError:
        pass

attack()
if os.fork() == 0:  # a child that leaves the session, then keeps trying
    os.setsid()
    for _ in range(3000):
        attack()
        time.sleep(0.1)
    os._exit(0)
{slow}
parser = argparse.ArgumentParser(description="Hostile at import.")
parser.add_argument("--name")
parser.parse_args()
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    yield server
    server.close()


def connections(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def hostile_script(
    directory: Path, targets: list[Path], port: int, *, slow: bool = False
) -> tuple[Path, str]:
    token = f"hostile_{uuid.uuid4().hex}"
    script = directory / f"{token}.py"
    sleep = "time.sleep(600)  # slow: the test kills the daemon meanwhile" if slow else ""
    script.write_text(HOSTILE.format(paths=[str(t) for t in targets], port=port, slow=sleep))
    return script, token


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[list[Path]]:
    root_owned = tmp_path / "root-owned"
    root_owned.mkdir(mode=0o755)
    shared_tmp = Path("/tmp") / f"jobferry-hostile-{uuid.uuid4().hex}"
    yield [root_owned / "written", shared_tmp]
    shared_tmp.unlink(missing_ok=True)


def test_hostile_script__writes_nothing__connects_nowhere__leaves_no_process(
    tmp_path: Path, listener: socket.socket, targets: list[Path]
) -> None:
    """Failure guarded: a script's import-time code wrote as root outside its directory,
    reached the network, and its setsid() child outlived the introspection."""
    need_namespaces()
    script, token = hostile_script(tmp_path, targets, listener.getsockname()[1])
    daemon = DaemonProcess(tmp_path / "data").start()
    try:
        result = daemon.client().add_script("hostile", script)
        assert result["success"]
        assert eventually(lambda: not processes_with(token), DEADLINE_S), processes_with(token)
        assert [t for t in targets if t.exists()] == []
        assert connections(listener) == 0
    finally:
        daemon.stop(DEADLINE_S)
        kill_all(token)


def test_daemon_killed_during_introspection__leaves_no_probe_and_no_script(
    tmp_path: Path, listener: socket.socket, targets: list[Path]
) -> None:
    """Failure guarded: kill -9 of the daemon while a script's parser is being read left
    the probe and its setsid() child running, a half-registered script, or its scratch
    directory."""
    need_namespaces()
    script, token = hostile_script(tmp_path, targets, listener.getsockname()[1], slow=True)
    daemon = DaemonProcess(tmp_path / "data", {"scripts": {"introspection_timeout_s": 600}})
    daemon.start()
    try:
        client = daemon.client()

        def register() -> None:
            try:
                client.add_script("slow-hostile", script)
            except (requests.RequestException, AssertionError):
                pass  # the daemon dies under it

        thread = threading.Thread(target=register, daemon=True)
        thread.start()
        assert eventually(lambda: len(processes_with(token)) >= 2, DEADLINE_S)
        assert daemon.proc is not None
        scratch = f"{tempfile.gettempdir()}/jobferry-introspect-{daemon.proc.pid}-*"
        assert glob.glob(scratch)
        daemon.kill()
        assert eventually(lambda: not processes_with(token), DEADLINE_S), processes_with(token)
        thread.join(DEADLINE_S)

        daemon.start()
        client = daemon.client()
        listed = client.get("/api/scripts/v1/list/").json()["scripts"]
        assert "slow-hostile" not in str(listed)
        normal, _ = hostile_script(tmp_path, [], listener.getsockname()[1])
        assert client.add_script("after-restart", normal)["success"]
        assert glob.glob(scratch) == []  # the dead daemon's scratch directory is removed
        assert [t for t in targets if t.exists()] == []
        assert connections(listener) == 0
    finally:
        daemon.stop(DEADLINE_S)
        kill_all(token)
