"""Two daemons on one PostgreSQL store: a script updated through one node is run with its
new spec by the other, never with the other's cached spec or checked commands.

Node B caches what a submission needs (the resolved version for
``submission.VERSION_CACHE_S``, the parsed spec by version id and checksum, the
checked command per spec object); node A registers a new version of the script.
Within the stated bound node B resolves the new default version and checks
commands against its parser: the old version's options are refused, the new
ones accepted, and the stored job names the new version. Always PostgreSQL (the
store several nodes share), whatever engine the rest of the run uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.db import fresh_pg_database, store_sql
from tests.helpers import DEADLINE_S, Client, DaemonProcess
from tests.services import require

pytestmark = [pytest.mark.e2e, pytest.mark.engine_independent, pytest.mark.timeout(300)]

FIRST = """import argparse
p = argparse.ArgumentParser()
p.add_argument("--alpha", type=int)
p.parse_args()
"""
SECOND = """import argparse
p = argparse.ArgumentParser()
p.add_argument("--beta", type=int)
p.parse_args()
"""


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[Client, Client, str]]:
    """Nodes n1 and n2 on one fresh database, jobs kept queued (no slots)."""
    require("postgres")
    url = fresh_pg_database()
    daemons: list[DaemonProcess] = []
    try:
        for name in ("n1", "n2"):
            config = {
                "database": {"url": url, "pool_size": 4},
                "node": {"name": name},
                "runners": {"local": {"slots": 0}},
            }
            daemons.append(DaemonProcess(tmp_path / name, config).start())
        key = daemons[0].admin_key
        yield Client(daemons[0].url, key), Client(daemons[1].url, key), url
    finally:
        for daemon in daemons:
            daemon.stop()


def submit(client: Client, slug: str, command: str) -> tuple[int, dict[str, object]]:
    response = client.post(
        f"/api/scripts/v1/{slug}/submit/", data={"job_name": "cache", "command": command}
    )
    return response.status_code, response.json()


def default_version_id(url: str) -> str:
    rows = store_sql(url, "SELECT id FROM script_versions WHERE is_default")
    assert len(rows) == 1, rows
    return str(rows[0]["id"])


def test_script_updated_on_one_node__the_other_runs_it_with_the_new_spec(
    two_nodes: tuple[Client, Client, str], tmp_path: Path
) -> None:
    a, b, url = two_nodes
    script = tmp_path / "caches.py"
    script.write_text(FIRST)
    slug = str(a.add_script("caches", script)["slug"])
    old_version = default_version_id(url)

    # Node B resolves, parses and checks (everything it caches), twice.
    for _ in range(2):
        status, body = submit(b, slug, "--alpha 1")
        assert status == 200 and body["valid"], body
        status, body = submit(b, slug, "--beta 2")
        assert status == 400 and not body["valid"], body

    script.write_text(SECOND)
    a.add_script("caches", script)
    new_version = default_version_id(url)
    assert new_version != old_version

    # Node B sees the new default version once its VERSION_CACHE_S has passed (2 s);
    # meanwhile it may still run the old version, with the old version's own spec.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, body = submit(b, slug, "--beta 2")
        if status == 200:
            break
        assert status == 400, body  # the old version's parser refusing --beta
        assert time.monotonic() < deadline, "node B never ran the new version"
        time.sleep(0.2)
    job = store_sql(
        url,
        "SELECT script_version_id, params, argv FROM jobs WHERE id = :id",
        {"id": body["job_id"]},
    )[0]
    assert job["script_version_id"] == new_version
    assert job["params"] == {"beta": 2}
    assert job["argv"][-1] == "--beta=2"

    # From then on the old command is refused: neither the old spec nor the result of
    # checking "--alpha 1" against it is reused for the new version.
    for _ in range(3):
        status, body = submit(b, slug, "--alpha 1")
        assert status == 400 and not body["valid"], body
    # Node A, which registered it, agrees at once.
    status, body = submit(a, slug, "--alpha 1")
    assert status == 400, body
    status, body = submit(a, slug, "--beta 3")
    assert status == 200, body
