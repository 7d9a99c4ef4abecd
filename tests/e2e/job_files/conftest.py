"""The job_files modules' fixtures: each module (scope "module", as before the split) gets
its own daemon, admin client and long-running job with an input file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.job_files.support import INPUT_TEXT, JobRef, start_job
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, eventually, running_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("jobfiles")
    with running_daemon(base / "data", {"server": {"max_upload_mb": 1100}}) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Client:
    client = daemon.client()
    client.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    return client


@pytest.fixture(scope="module")
def job(daemon: DaemonProcess, admin: Client) -> Iterator[JobRef]:
    """A long job with an input file, running (it has printed to stdout)."""
    ref = start_job(daemon, admin, files={"extra": ("input.txt", INPUT_TEXT)})
    try:
        assert eventually(lambda: (ref.dir / "stdout").read_bytes().startswith(b"pid "))
        yield ref
    finally:
        daemon.cli("job", "cancel", ref.id, check=False)
