"""daemon.sdnotify: systemd's variables read once and taken out; sending never raises.

The messages themselves, from a real daemon to a real socket, are
tests/e2e/test_sdnotify.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from jobferry.daemon.sdnotify import Notifier

pytestmark = pytest.mark.engine_independent


def test_from_environment__reads_the_variables_once_and_removes_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    notifier = Notifier.from_environment()

    assert (notifier.address, notifier.watchdog_s) == (path, 15.0)
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


@pytest.mark.parametrize(
    ("usec", "pid"), [("30000000", "1"), ("0", ""), ("soon", ""), ("", "")], ids=str
)
def test_from_environment__no_watchdog_unless_meant_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@jobferry-unit")
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setenv("WATCHDOG_PID", pid)

    notifier = Notifier.from_environment()

    assert notifier.address == "\0jobferry-unit"
    assert notifier.watchdog_s is None


def test_notify__sends_one_datagram_and_fails_quietly(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        assert Notifier(path).notify("READY=1\nSTATUS=x")
        assert systemd.recv(100) == b"READY=1\nSTATUS=x"

    assert not Notifier(path).notify("STOPPING=1")  # nobody listens any more: logged
    assert not Notifier("vsock:2:9999").notify("READY=1")  # not a unix socket
    assert not Notifier(None).notify("READY=1")  # not under systemd
