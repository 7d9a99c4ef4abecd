"""/readyz while PostgreSQL is away: 503 naming the store (not a 500), ready again after.

Runs on a private cluster (tests.pg_cluster), never the shared server, whatever
JOBFERRY_TEST_DB says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import DEADLINE_S, DaemonProcess, wait_for
from tests.pg_cluster import PrivateCluster

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(180)]


def test_readyz__postgres_outage_is_503_naming_the_store_then_ready_again(
    cluster: PrivateCluster, tmp_path: Path
) -> None:
    config = {"database": {"url": cluster.url, "pool_size": 2}}
    daemon = DaemonProcess(tmp_path / "data", config).start()
    try:
        url = f"{daemon.url}/readyz"
        assert wait_for("ready", lambda: _body(requests.get(url, timeout=DEADLINE_S), 200))

        cluster.stop()
        down = wait_for("not ready", lambda: _body(requests.get(url, timeout=DEADLINE_S), 503))
        assert down["status"] == "not ready"
        assert down["checks"]["store"].startswith("not answering: the database cannot be reached")
        assert down["checks"]["local"] == "ok"
        assert str(cluster.port) not in str(down)  # the driver's words stay in the log
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert "readiness: the store does not answer" in daemon.log_path.read_text()

        cluster.start()
        back = wait_for("ready again", lambda: _body(requests.get(url, timeout=DEADLINE_S), 200))
        assert back == {
            "status": "ready",
            "checks": {"store": "ok", "drain": "ok", "local": "ok", "disk": "ok"},
        }
    finally:
        daemon.stop()


def _body(response: requests.Response, status: int) -> Any:
    assert response.status_code in (200, 503), response.text  # never a 500
    return response.json() if response.status_code == status else None
