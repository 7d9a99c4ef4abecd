"""A daemon whose data directory (and SQLite store) lies on a small filesystem.

``disk_daemon`` (a fixture factory) mounts a fresh size-limited filesystem
(``small_fs``), starts ``jobferry serve`` with its data directory there (its log
and config file stay outside, so they never fill up), registers the
``disk_filler`` job script and stops everything at the end: the daemons it
started, then, by pid, any job process still working inside the filesystem.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, wait_for

#: The fault tests' generous overall deadline (a busy 2-core machine), seconds.
DEADLINE_S = 60.0
PID_LINE = re.compile(r"pid (\d+) filling")


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass
class DiskDaemon:
    """A daemon on a small filesystem (``fs`` is both the mount and the data dir)."""

    fs: Path
    daemon: DaemonProcess
    client: Client
    others: list[DaemonProcess] = field(default_factory=list)

    def job_dir(self, job_id: str) -> Path:
        return self.fs / "jobs" / job_id[:2] / job_id

    def ballast(self, mb: int) -> Path:
        """A file of *mb* MiB to delete later (gives that space back)."""
        path = self.fs / "ballast"
        with open(path, "wb") as out:
            for _ in range(mb):
                out.write(b"\0" * (1 << 20))
        return path

    def shrink_wal(self, store: Path | None = None) -> None:
        """Checkpoint the SQLite store (*store*, by default the data directory's) and
        truncate its write-ahead log to nothing, so that the store's next write needs
        new disk space (as in a busy daemon, whose log has no room left over to reuse)."""
        store = store or self.fs / "jobferry.db"
        if not store.exists():
            return  # the store lives elsewhere (a PostgreSQL run)
        with closing(sqlite3.connect(store, timeout=DEADLINE_S)) as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0

    def fill_with_job(self, exit_code: int, ballast_mb: int = 4) -> tuple[str, Path]:
        """Start a job that fills the disk and exits with *exit_code*; wait until it has
        ended (its end not recorded yet: the store cannot grow). Returns the job's id
        and a ballast file whose deletion gives *ballast_mb* MiB back."""
        ballast = self.ballast(ballast_mb)
        go = self.fs / "go"
        job_id = self.client.submit(
            "disk_filler",
            f"--mb 40 --exit-code {exit_code} --go {go}",
        )
        pid = self.job_pid(job_id)
        self.shrink_wal()
        go.touch()
        wait_for(f"job {job_id} to fill the disk and exit", lambda: _gone(pid))
        assert shutil.disk_usage(self.fs).free < 1 << 20
        return job_id, ballast

    def job_pid(self, job_id: str) -> int:
        stdout = self.job_dir(job_id) / "stdout"

        def pid() -> int | None:
            try:
                found = PID_LINE.search(stdout.read_text())
            except FileNotFoundError:
                return None
            return int(found.group(1)) if found else None

        return int(wait_for(f"job {job_id} to print its pid", pid))

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/jobs/v1/{job_id}/status/")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def details(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/jobs/v1/{job_id}/details/")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def restart(self) -> None:
        """Start a new daemon on the same data dir (the old one was stopped or killed)."""
        self.others.append(self.daemon)
        self.daemon = DaemonProcess(self.fs, self.daemon_config).start(timeout_s=DEADLINE_S)
        self.client = self.daemon.client()

    daemon_config: dict[str, Any] | None = None

    def close(self) -> None:
        for daemon in [*self.others, self.daemon]:
            if daemon.proc is None or daemon.proc.poll() is not None:
                continue
            try:
                daemon.stop(20)
            except Exception:
                daemon.kill()
        _kill_processes_in(self.fs)


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _kill_processes_in(where: Path) -> None:
    """Kill, by pid, every process whose working directory lies under *where*."""
    prefix = str(where) + os.sep
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and (proc.cwd() + os.sep).startswith(prefix):
                proc.kill()
        except (psutil.Error, OSError):
            pass


@pytest.fixture
def disk_daemon(
    small_fs: Callable[[int], Path],
) -> Iterator[Callable[..., DiskDaemon]]:
    """A factory: ``disk_daemon(20)`` is a running daemon on a fresh 20 MiB filesystem."""
    made: list[DiskDaemon] = []

    def make(size_mb: int, config: dict[str, Any] | None = None) -> DiskDaemon:
        fs = small_fs(size_mb)
        daemon = DaemonProcess(fs, config)
        env = DiskDaemon(fs, daemon, Client("", ""), daemon_config=config)
        made.append(env)
        daemon.start(timeout_s=DEADLINE_S)
        env.client = daemon.client()
        env.client.add_script("disk_filler", JOB_SCRIPTS / "disk_filler.py")
        return env

    try:
        yield make
    finally:
        for env in made:
            env.close()
