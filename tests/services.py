"""The real services the integration tests use, and how a test asks for one.

``scripts/services`` (run by ``scripts/test``) installs and starts them. A test
that needs one calls ``require(name)``: when the service does not answer, the test
is skipped on a developer's machine but fails when ``CI=true``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: The throwaway PostgreSQL cluster of scripts/services (override for another server).
PG_URL = os.environ.get(
    "JOBFERRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/jobferry"
)
#: Images scripts/services builds locally (no registry is reachable).
BUSYBOX_IMAGE = "jobferry-test/busybox:1"
PYTHON_IMAGE = "jobferry-test/python:1"
#: The Python 3.8 venv holding cwl-tes (it needs 3.8; scripts/services cwl-tes makes it).
CWLTES_VENV = Path(
    os.environ.get("JOBFERRY_CWLTES_VENV", "~/.cache/jobferry-cwltes-venv")
).expanduser()


def cwltes_command() -> list[str]:
    """The ``cwl-tes`` command line of that venv (``require("cwl-tes")`` first)."""
    return [str(CWLTES_VENV / "bin" / "cwl-tes")]


def _ok(*argv: str) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def available(name: str) -> bool:
    if name == "docker":
        return _ok("docker", "image", "inspect", BUSYBOX_IMAGE, PYTHON_IMAGE)
    if name == "nginx":
        return _ok("nginx", "-v") and _ok("openssl", "version")
    if name == "chromium":  # Debian's chromium and chromium-driver (tests/browser)
        return _ok("/usr/bin/chromium", "--version") and _ok("/usr/bin/chromedriver", "--version")
    if name == "slurm":
        return _ok("scontrol", "ping") and _ok("sbatch", "--version")
    if name == "cwl-tes":  # installed, and imports (its --version loads cwltool)
        return _ok(*cwltes_command(), "--version")
    if name == "postgres":
        try:
            import psycopg
        except ImportError:
            return False
        try:
            url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False
    raise ValueError(f"unknown service {name!r}")


def require(name: str) -> None:
    """Skip the calling test if *name* is not running; fail instead under CI=true."""
    if available(name):
        return
    message = f"{name} is not available (scripts/services {name} installs or starts it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
