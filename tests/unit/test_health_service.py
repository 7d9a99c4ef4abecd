"""services.health: readiness checks, each failure named, one shared and cached evaluation.

On the run's store engine (SQLite file or PostgreSQL database); the runner is the
fake one, whose ``unusable`` says what ``check_usable`` answers (the real runners'
answers are held to the contract in tests/integration/test_runner_contract_suite.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
from tornado.httpclient import AsyncHTTPClient

from jobferry.api.app import make_app
from jobferry.config import parse_config
from jobferry.runners.fake import FakeRunner
from jobferry.services.container import build
from jobferry.services.core import Core, Principal
from jobferry.services.health import OK, STORE_DOWN, HealthService
from jobferry.services.nodes import NodeService
from jobferry.store.engine import check_schema
from tests.db import store_sql, with_database
from tests.helpers import DEADLINE_S, wait_for

ADMIN = Principal("u-admin", "admin", True)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    data = tmp_path / "data"
    config = parse_config(with_database({"data_dir": str(data), "node": {"name": "n1"}}, data))
    made = Core(config, runners={"fake": FakeRunner()}, node_name="n1")
    made.ensure_dirs()
    check_schema(made.engine)
    NodeService(made).register(url="http://127.0.0.1:1")
    yield made
    made.close()


def readiness(service: HealthService, times: int = 1) -> list[Any]:
    async def main() -> list[Any]:
        calls = (service.readiness() for _ in range(times))
        return list(await asyncio.wait_for(asyncio.gather(*calls), DEADLINE_S))

    return asyncio.run(main())


def test_readiness__every_check_ok_is_ready(core: Core) -> None:
    [result] = readiness(HealthService(core))

    assert result.checks == {"store": OK, "drain": OK, "fake": OK}
    assert result.ready
    assert result.as_json() == {"status": "ready", "checks": result.checks}


def test_readiness__each_failing_check_is_named(core: Core) -> None:
    fake = core.runners["fake"]
    assert isinstance(fake, FakeRunner)
    fake.unusable = "engine not answering: gone"
    NodeService(core).set_drained(ADMIN, "n1", True)
    disk = {"disk": lambda: "12 MB free on /data, 1024 MB required"}

    [result] = readiness(HealthService(core, extra=disk))

    assert not result.ready
    assert result.as_json() == {
        "status": "not ready",
        "checks": {
            "store": OK,
            "drain": "draining",
            "fake": "engine not answering: gone",
            "disk": "12 MB free on /data, 1024 MB required",
        },
    }


def test_readiness__an_extra_check_that_raises_is_reported_not_raised(core: Core) -> None:
    def broken() -> str:
        raise OSError("statvfs failed")

    [result] = readiness(HealthService(core, extra={"disk": broken}))

    assert not result.ready
    assert result.checks["disk"] == "not answering: statvfs failed"
    assert result.checks["store"] == OK


def test_readiness__a_schema_out_of_date_names_the_revisions(core: Core) -> None:
    store_sql(core.config.database_url, "DELETE FROM alembic_version")

    [result] = readiness(HealthService(core))

    assert not result.ready
    assert "schema is at revision none but this jobferry needs" in result.checks["store"]
    assert "jobferry db upgrade" in result.checks["store"]


def test_readiness__a_store_that_does_not_answer_is_named_not_raised(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://nobody@127.0.0.1:{port}/none"
    config = parse_config({"data_dir": str(tmp_path / "data"), "database": {"url": url}})
    core = Core(config, runners={"fake": FakeRunner()}, node_name="n1")
    try:
        [result] = readiness(HealthService(core))
    finally:
        core.close()

    assert not result.ready
    assert result.checks["store"] == STORE_DOWN
    assert result.checks["drain"] == "unknown: the store does not answer"
    assert result.checks["fake"] == OK
    assert str(port) not in str(result.checks)  # the driver's words stay in the log


def test_readiness__concurrent_requests_share_one_evaluation_then_the_cache(core: Core) -> None:
    gate = threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        gate.wait(DEADLINE_S)  # held until every request below is waiting
        return OK

    service = HealthService(core, extra={"slow": slow}, cache_s=3600, timeout_s=DEADLINE_S)

    async def main() -> list[Any]:
        requests = [asyncio.ensure_future(service.readiness()) for _ in range(200)]
        await asyncio.sleep(0)  # every request has started and found the evaluation
        gate.set()
        first = await asyncio.wait_for(asyncio.gather(*requests), DEADLINE_S)
        later = await asyncio.gather(*(service.readiness() for _ in range(50)))
        return [*first, *later]

    results = asyncio.run(main())

    assert len(results) == 250 and all(r is results[0] for r in results)
    assert results[0].ready
    assert service.evaluations == 1 and len(calls) == 1


def test_readiness__after_the_cache_a_new_evaluation_runs(core: Core) -> None:
    service = HealthService(core, cache_s=0.0)
    first, second = readiness(service), readiness(service)

    assert service.evaluations == 2
    assert first[0] is not second[0] and first[0].checks == second[0].checks


def test_readiness__a_hung_check_is_reported_and_not_started_again(core: Core) -> None:
    release = threading.Event()
    calls: list[int] = []

    def hung() -> str:
        calls.append(1)
        release.wait(DEADLINE_S)
        return OK

    service = HealthService(core, extra={"hung": hung}, cache_s=0.0, timeout_s=0.2)
    try:
        first, second = readiness(service)[0], readiness(service)[0]
    finally:
        release.set()

    for result in (first, second):
        assert not result.ready
        assert result.checks["hung"] == "no answer within 0.2 s"
    assert len(calls) == 1  # the second evaluation waited on the same run
    # Once that run has answered (a busy machine may take a while), the next
    # evaluation starts the check again; while it still ran, it would wait on it.
    wait_for("the hung run to be done", lambda: service._running["hung"].done())
    service.timeout_s = DEADLINE_S
    [after] = readiness(service)
    assert after.checks["hung"] == OK and len(calls) == 2


def get_readyz(core: Core, **checks: Any) -> tuple[int, Any]:
    """``GET /readyz`` (no key) from the app in-process, built with extra *checks*."""

    async def main() -> tuple[int, Any]:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(make_app(build(core, health_checks=checks)))
        server.add_sockets(sockets)
        client = AsyncHTTPClient()
        try:
            url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/readyz"
            response = await client.fetch(url, raise_error=False, request_timeout=DEADLINE_S)
            return response.code, json.loads(response.body)
        finally:
            client.close()
            server.stop()
            await server.close_all_connections()

    return asyncio.run(main())


def test_readyz__an_extra_failing_check_gives_503_with_its_entry(core: Core) -> None:
    status, body = get_readyz(core, disk=lambda: "12 MB free on /data, 1024 MB required")

    assert status == 503
    assert body == {
        "status": "not ready",
        "checks": {
            "store": OK,
            "drain": OK,
            "fake": OK,
            "disk": "12 MB free on /data, 1024 MB required",
        },
    }


def test_readyz__every_check_ok_gives_200(core: Core) -> None:
    status, body = get_readyz(core, disk=lambda: OK)

    assert status == 200
    assert body == {"status": "ready", "checks": {"store": OK, "drain": OK, "fake": OK, "disk": OK}}
