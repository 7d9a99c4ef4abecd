"""A private, throwaway PostgreSQL cluster a test may stop and start at will.

The shared server of ``scripts/services`` must never be restarted, so a test that
takes PostgreSQL away runs its own: ``initdb`` in a temporary directory, trust
auth, listening on 127.0.0.1 only on a free port, run as the ``postgres`` user.
``close()`` stops it (by ``pg_ctl stop``, else by its postmaster's pid) and
removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("JOBFERRY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_cluster_tools() -> None:
    """Skip (fail under CI=true) unless initdb/pg_ctl and a postgres user are usable."""
    problem = None
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        problem = f"no initdb/pg_ctl in {PG_BIN} (JOBFERRY_TEST_PG_BIN names another)"
    elif os.geteuid() != 0 or shutil.which("runuser") is None:
        problem = "a private PostgreSQL cluster needs root (to run it as the postgres user)"
    else:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            problem = "no postgres user"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


class PrivateCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jobferry-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )

    @property
    def url(self) -> str:
        return self.database_url("jobferry")

    def database_url(self, name: str) -> str:
        """The URL of database *name* (``postgres`` exists from the start)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _as_postgres(self, *argv: str) -> None:
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.dir,
        )
        if result.returncode != 0:
            raise AssertionError(f"{argv} failed: {result.stdout}\n{result.stderr}")

    def start(self, *settings: str) -> None:
        """Start (``pg_ctl start -w``) with *settings* (``name=value``) besides ours."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        options += "".join(f" -c {setting}" for setting in settings)
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "start", "-w", "-D", str(self.data), "-l", str(self.log),
            "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop at once, cutting every connection (a crash or a failover, as clients see it)."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data))

    def create_database(self, name: str) -> None:
        self._as_postgres(
            str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            name,
        )  # fmt: skip

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return None

    def close(self) -> None:
        pid = self._postmaster_pid()
        if pid is not None:
            try:
                self.stop()
            except Exception:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown of this cluster only
                    for _ in range(100):
                        os.kill(pid, 0)
                        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
