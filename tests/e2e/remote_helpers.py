"""What the ``jobferry remote`` tests share: a daemon with a user and a script, and
running the client as a real ``python -m jobferry.cli remote`` process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DEADLINE_S, JOB_SCRIPTS, DaemonProcess, _env

SCRIPT = "remote_job"


class Remote:
    """A running daemon, a user's key, and a home directory of the client's own."""

    def __init__(self, daemon: DaemonProcess, key: str, admin_key: str, home: Path) -> None:
        self.daemon = daemon
        self.key = key
        self.admin_key = admin_key
        self.home = home

    def env(self, key: str | None = None, url: str | None = None) -> dict[str, str]:
        """The client's environment: no client file (a fresh home) unless a test writes one."""
        env = _env()
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"))
        env["JOBFERRY_URL"] = self.daemon.url if url is None else url
        env["JOBFERRY_KEY"] = self.key if key is None else key
        for name, value in list(env.items()):
            if value == "":
                del env[name]
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "jobferry.cli", "remote", *args]

    def run(
        self, *args: str, key: str | None = None, url: str | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=4 * DEADLINE_S,
            env={**self.env(key, url), **kw.pop("env", {})},
            **kw,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
            **kw,
        )


@pytest.fixture(scope="module", name="remote")
def remote_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    base = tmp_path_factory.mktemp("remote")
    daemon = DaemonProcess(base / "data")
    admin_key = daemon.cli("user", "create", "root", "--admin").stdout.strip()
    key = daemon.cli("user", "create", "alice").stdout.strip()
    daemon.cli("script", "add", str(JOB_SCRIPTS / f"{SCRIPT}.py"), "--name", SCRIPT)
    home = base / "home"
    home.mkdir()
    daemon.start()
    try:
        yield Remote(daemon, key, admin_key, home)
    finally:
        daemon.stop()


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path
