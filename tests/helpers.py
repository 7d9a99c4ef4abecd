"""Test helpers: a real daemon process on 127.0.0.1 and an HTTP client for it."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.db import database_url, on_postgres, with_database

ROOT = Path(__file__).resolve().parent.parent
JOB_SCRIPTS = ROOT / "tests" / "data" / "jobs"
#: The overall deadline of a wait on a daemon, a job or the store's state. Generous on
#: purpose: a passing wait returns as soon as its state is reached, so it costs nothing;
#: only a failing one waits this long. The machine may be busy (2 cores, several runs).
DEADLINE_S = 60.0

#: Set (by tests/e2e/conftest.py) to run every daemon with DEBUG logging and access
#: logs, and to record the secrets issued, so the session's end can grep the logs.
WATCH_SECRETS_ENV = "JOBFERRY_TEST_WATCH_SECRETS"
#: API keys and job_keys seen in this test process (CLI output, requests, key files).
ISSUED_SECRETS: set[str] = set()
#: Every daemon log written in this test process.
DAEMON_LOGS: set[Path] = set()
#: An API key, in jobferry's form.
API_KEY = re.compile(r"jf_[A-Za-z0-9_\-]{20,}")
#: A job_key: 64 hex digits (an HMAC-SHA256), like a file's checksum, so only
#: values known to be job_keys are noted as such.
JOB_KEY = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
#: Shorter passwords (tests' deliberately bad ones) could match innocent log text.
MIN_NOTED_PASSWORD = 8
#: How many watched daemons were made: every second one logs JSON lines.
_WATCHED = itertools.count()


def note_secrets(text: str | None, *, job_key: bool = False) -> None:
    """Remember every API key in *text*, or, if *text* is known to hold job_keys (the
    output of ``job key``, a ``job_key`` value), every job_key in it (when watched)."""
    if not text or not os.environ.get(WATCH_SECRETS_ENV):
        return
    if job_key:
        ISSUED_SECRETS.update(JOB_KEY.findall(text))
        return
    ISSUED_SECRETS.update(API_KEY.findall(text))


def note_password(password: str | None) -> None:
    """Remember *password* (set for a user, or sent to baseauth) when watched."""
    if password and len(password) >= MIN_NOTED_PASSWORD and os.environ.get(WATCH_SECRETS_ENV):
        ISSUED_SECRETS.add(password)


def log_text(path: Path) -> str:
    """A daemon's log as text: JSON lines (``logging.format: json``) rendered as the
    text format writes them (``time LEVEL logger: message``, then the traceback)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line) if line.startswith("{") else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or "message" not in record:
            out.append(line)
            continue
        when = str(record.get("time", "")).replace("T", " ").rstrip("Z").replace(".", ",")
        out.append(f"{when} {record.get('level')} {record.get('logger')}: {record['message']}")
        if record.get("exception"):
            out.append(record["exception"])
    return "\n".join(out) + "\n"


def eventually(check: Any, timeout_s: float = DEADLINE_S) -> bool:
    """True as soon as *check()* is truthy; False if it never is within *timeout_s*."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = DEADLINE_S) -> Any:
    """Poll *check* until it returns something truthy and return that; fail, naming
    *what*, after *timeout_s*."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


class DaemonProcess:
    """``jobferry serve`` in a subprocess, on a free port, with its own data dir.

    Its store is the test run's engine (``tests.db``): on PostgreSQL the config file
    always names the data dir's own database, so daemons and CLI runs on one data
    dir share it.
    """

    def __init__(self, data_dir: Path, config: dict[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url(data_dir)
        # The disk guard off unless the test sets its own (small tmpfs data dirs).
        config = dict(config or {})
        config.setdefault("storage", {"min_free_mb": 0, "min_free_percent": 0})
        if on_postgres():
            config = with_database(config or {}, data_dir)
        if os.environ.get(WATCH_SECRETS_ENV):
            config = dict(config or {})
            # Every second daemon logs JSON lines, so both formats are watched.
            fmt = "json" if next(_WATCHED) % 2 else "text"
            config.setdefault("logging", {"level": "DEBUG", "access_log": True, "format": fmt})
        #: 0: any free port (a new one at each start); the config's server.port if given.
        self.port = int(((config or {}).get("server") or {}).get("port") or 0)
        self.config_path: Path | None = None
        if config is not None:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            self.config_path = data_dir.parent / f"{data_dir.name}.yml"
            self.config_path.write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        DAEMON_LOGS.add(self.log_path)
        #: Put before the daemon's command line (e.g. ``["prlimit", "--nofile=300"]``).
        self.command_prefix: list[str] = []
        #: Extra environment of the daemon (e.g. systemd's ``NOTIFY_SOCKET``).
        self.env: dict[str, str] = {}

    def cli_command(self, *args: str) -> list[str]:
        """``jobferry ARGS`` on this daemon's data dir and config (so: on its store)."""
        cmd = [sys.executable, "-m", "jobferry.cli", *args, "--data-dir", str(self.data_dir)]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        return cmd

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.cli_command(*args)
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=2 * DEADLINE_S, env=_env()
        )
        note_secrets(result.stdout, job_key=args[:2] == ("job", "key"))
        if args[:2] == ("user", "passwd") and input and result.returncode == 0:
            note_password(input.splitlines()[0] if input.strip() else None)
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd} failed: {result.stdout}\n{result.stderr}")
        return result

    def start(self, timeout_s: float = DEADLINE_S) -> DaemonProcess:
        state = self.data_dir / "daemon.json"
        state.unlink(missing_ok=True)
        cmd = [
            *self.command_prefix,
            sys.executable,
            "-m",
            "jobferry.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        log = open(self.log_path, "ab")  # noqa: SIM115
        env = {**_env(), **self.env}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log_path.read_text()}")
            try:
                info = json.loads(state.read_text())
                if info["pid"] == self.proc.pid:
                    self.url = info["url"]
                    return self
            except (FileNotFoundError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"daemon did not start: {self.log_path.read_text()}")

    @property
    def admin_key(self) -> str:
        key = (self.data_dir / "admin-api-key").read_text().strip()
        note_secrets(key)
        return key

    def log_text(self) -> str:
        """This daemon's log, in the text format whichever format it was written in."""
        return log_text(self.log_path)

    def client(self, key: str | None = None) -> Client:
        return Client(self.url, self.admin_key if key is None else key)

    def stop(self, timeout_s: float = DEADLINE_S) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(DEADLINE_S)


def job_hosts(daemon_pid: int) -> list[int]:
    """The pids of the job hosts a daemon started (``runners/jobhost.py``): the local
    jobs' recorders, which outlive the daemon."""
    import psutil

    found = []
    try:
        for child in psutil.Process(daemon_pid).children():
            try:
                if any(arg.endswith("jobhost.py") for arg in child.cmdline()):
                    found.append(child.pid)
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return found


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBFERRY_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


class Client:
    """requests against one daemon with one API key."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=DEADLINE_S, **kw)

    def head(self, path: str, **kw: Any) -> requests.Response:
        return self.session.head(self.url + path, timeout=DEADLINE_S, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.url + path, timeout=DEADLINE_S, **kw)

    def add_script(self, name: str, path: Path, **data: Any) -> dict[str, Any]:
        with open(path, "rb") as handle:
            response = self.post("/api/scripts/v1/add-or-update/", data=data, files={name: handle})
        assert response.status_code == 200, response.text
        result = response.json()[0]
        assert result["success"], result
        return dict(result)

    def submit(self, slug: str, command: str = "", files: Any = None, **data: Any) -> str:
        data.setdefault("job_name", "test job")
        response = self.post(
            f"/api/scripts/v1/{slug}/submit/", data={"command": command, **data}, files=files
        )
        assert response.status_code == 200 and response.json()["valid"], response.text
        return str(response.json()["job_id"])

    def wait(self, job_id: str, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.get(f"/api/jobs/v1/{job_id}/status/").json()
            if status["is_complete"]:
                return dict(self.get(f"/api/jobs/v1/{job_id}/details/").json())
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish in {timeout_s}s")


@contextmanager
def running_daemon(data_dir: Path, config: dict[str, Any] | None = None) -> Iterator[DaemonProcess]:
    """A started ``DaemonProcess`` on *data_dir*, stopped (SIGTERM, then waited for) on exit."""
    proc = DaemonProcess(data_dir, config).start()
    try:
        yield proc
    finally:
        proc.stop()
