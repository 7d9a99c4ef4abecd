"""systemd's notifications from a real daemon: READY=1, WATCHDOG=1, STOPPING=1.

The test plays systemd: it binds a unix datagram socket of its own (an abstract
``@`` name, as systemd uses, and a path) and starts ``jobferry serve`` with
``NOTIFY_SOCKET`` (and ``WATCHDOG_USEC``) pointing at it.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DEADLINE_S, JOB_SCRIPTS, DaemonProcess

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(180)]


class Listener:
    """systemd's end of the notification socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        #: Every message received, in order.
        self.messages: list[str] = []

    def until(self, line: str) -> list[str]:
        """Read messages until one holds *line*; return every message so far."""
        deadline = time.monotonic() + DEADLINE_S
        while not any(line in m.split("\n") for m in self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line} in {self.messages}")
            self.sock.settimeout(left)
            self.messages.append(self.sock.recv(4096).decode())
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["abstract", "path"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    if request.param == "abstract":
        name = f"jobferry-test-{uuid.uuid4().hex}"
        env_value, address = f"@{name}", f"\0{name}"
    else:
        env_value = address = str(tmp_path / "notify.sock")
    made = Listener(address)
    try:
        yield env_value, made
    finally:
        made.close()


def test_sdnotify__ready_watchdog_and_stopping_reach_systemd(
    listener: tuple[str, Listener], tmp_path: Path
) -> None:
    env_value, systemd = listener
    daemon = DaemonProcess(tmp_path / "data")
    daemon.env = {"NOTIFY_SOCKET": env_value, "WATCHDOG_USEC": "200000"}  # pings every 0.1 s
    daemon.start()
    try:
        ready = systemd.until("READY=1")
        assert daemon.url and f"STATUS=serving on {daemon.url}" in ready[-1].split("\n")
        assert (daemon.data_dir / "daemon.json").exists()  # written before READY=1
        systemd.until("WATCHDOG=1")
        pings = len(systemd.messages)
        systemd.messages.append(systemd.sock.recv(4096).decode())  # the pings go on
        assert systemd.messages[pings:] == ["WATCHDOG=1"]

        # Jobs never see systemd's variables (they would be taken for the daemon).
        client = daemon.client()
        client.add_script("env-names", JOB_SCRIPTS / "env_names.py")
        names = client.wait(client.submit("env-names"))["stdout"].split()
        assert "PATH" in names
        assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(names)
    finally:
        status = daemon.stop()

    assert status == 0
    messages = systemd.until("STOPPING=1")
    assert messages.index("READY=1\nSTATUS=serving on " + daemon.url) < len(messages) - 1


def test_sdnotify__no_watchdog_pings_for_another_pid(tmp_path: Path) -> None:
    name = f"jobferry-test-{uuid.uuid4().hex}"
    systemd = Listener(f"\0{name}")
    daemon = DaemonProcess(tmp_path / "data")
    # systemd meant the watchdog for another process (e.g. a wrapper): not ours to ping.
    daemon.env = {"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    daemon.start()
    try:
        systemd.until("READY=1")
    finally:
        status = daemon.stop()
        messages = systemd.until("STOPPING=1")
        systemd.close()

    assert status == 0
    assert not [m for m in messages if "WATCHDOG=1" in m.split("\n")], messages
