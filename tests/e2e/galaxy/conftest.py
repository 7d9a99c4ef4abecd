"""The Galaxy-face modules' fixtures: each module (scope "module", as before the split) gets
its own daemon, admin, alice (with a password), bob and a finished job of alice's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.galaxy.support import ALICE_PASSWORD, Galaxy, passwd
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess

# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("galaxy")
    proc = DaemonProcess(
        base / "data", {"runners": {"local": {"kill_grace_s": 2.0, "slots": 2}}}
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Galaxy:
    wooey = daemon.client()
    wooey.add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
    wooey.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    return Galaxy(daemon.url, daemon.admin_key)


@pytest.fixture(scope="module")
def alice_key(daemon: DaemonProcess, admin: Galaxy) -> str:
    key = daemon.cli("user", "create", "alice", "--email", "alice@example.org").stdout.strip()
    result = passwd(daemon, "alice", ALICE_PASSWORD)
    assert result.returncode == 0, result.stderr
    return key


@pytest.fixture(scope="module")
def alice(daemon: DaemonProcess, alice_key: str) -> Galaxy:
    return Galaxy(daemon.url, alice_key)


@pytest.fixture(scope="module")
def bob(daemon: DaemonProcess, admin: Galaxy) -> Galaxy:
    key = daemon.cli("user", "create", "bob", "--email", "bob@example.org").stdout.strip()
    return Galaxy(daemon.url, key)


@pytest.fixture(scope="module")
def alice_job(daemon: DaemonProcess, alice_key: str) -> str:
    """A finished wordcount job of alice's, submitted through the Wooey face."""
    wooey = Client(daemon.url, alice_key)
    job_id = wooey.submit(
        "wordcount", "--infile doc --upper", files={"doc": ("doc.txt", b"one two three")}
    )
    assert wooey.wait(job_id)["status"] == "completed"
    return job_id
