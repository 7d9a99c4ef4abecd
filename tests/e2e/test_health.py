"""/healthz and /readyz of a real daemon: no authentication, each check named, drain.

A PostgreSQL outage (the store check) is tests/integration/test_readyz_outage.py;
the runners' own checks against the real engine and controller are in the runner
contract suite; systemd's notifications are tests/e2e/test_sdnotify.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobferry import __version__
from tests.helpers import DEADLINE_S, DaemonProcess, running_daemon, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path / "data", {"node": {"name": "n-health"}}) as made:
        yield made


def readyz(daemon: DaemonProcess) -> requests.Response:
    return requests.get(f"{daemon.url}/readyz", timeout=DEADLINE_S)  # no key


def test_healthz__answers_without_a_key_from_memory(daemon: DaemonProcess) -> None:
    response = requests.get(f"{daemon.url}/healthz", timeout=DEADLINE_S)

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "version": __version__, "node": "n-health"}


def test_readyz__a_working_daemon_is_ready_without_a_key(daemon: DaemonProcess) -> None:
    response = readyz(daemon)

    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json() == {
        "status": "ready",
        "checks": {"store": "ok", "drain": "ok", "local": "ok", "disk": "ok"},
    }


def test_readyz__a_drained_node_is_not_ready_until_undrained(daemon: DaemonProcess) -> None:
    daemon.cli("node", "drain", "n-health")

    drained = wait_for("/readyz to say draining", lambda: _answer(readyz(daemon), 503))

    assert drained == {
        "status": "not ready",
        "checks": {"store": "ok", "drain": "draining", "local": "ok", "disk": "ok"},
    }
    daemon.cli("node", "undrain", "n-health")
    assert wait_for("/readyz to be ready again", lambda: _answer(readyz(daemon), 200))


def test_readyz__an_enabled_runner_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    socket = tmp_path / "no-docker.sock"  # nothing listens: the engine does not answer
    config = {"runners": {"docker": {"enabled": True, "base_url": f"unix://{socket}"}}}
    daemon = DaemonProcess(tmp_path / "data", config).start()
    try:
        response = readyz(daemon)
    finally:
        daemon.stop()

    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    assert (checks["store"], checks["drain"], checks["local"]) == ("ok", "ok", "ok")
    assert checks["docker"].startswith("engine not answering: ")
    assert str(socket) in checks["docker"]


def _answer(response: requests.Response, status: int) -> Any:
    """The body when *response* has *status*, else None (to wait for it)."""
    return response.json() if response.status_code == status else None
