"""The processes a benchmark starts: ``jobferry serve`` and small reference servers.

Each is a ``Managed`` subprocess, registered when created and stopped by its
pid (SIGTERM, then SIGKILL after a bound), never by name: ``Managed.stop_all``
in a benchmark's ``finally`` leaves nothing behind, also after an error or
Ctrl-C. A ``Daemon`` has its own data directory (and log, and config file)
below the run's temporary workspace; it is found started when the
``daemon.json`` it writes names its pid, and its admin key is read from the data
directory. Its environment drops every ``JOBFERRY_*`` variable of the caller
(the benchmark measures the configuration it writes, nothing inherited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common.clients import HttpConn
from bench.common.report import ROOT, BenchError, interrupt_on_sigterm, log, stamp, workspace

#: The test suite's job scripts (noop.py, sleeper.py, ...), used as benchmark jobs.
JOB_SCRIPTS = ROOT / "tests" / "data" / "jobs"


def daemon_env(tree: Path | None = None) -> dict[str, str]:
    """The environment of a daemon, a CLI run or a reference server: this tree's code
    (or *tree*'s: another checkout of jobferry, e.g. a baseline commit's worktree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBFERRY_")}
    env["PYTHONPATH"] = str(tree or ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def job_env(workdir: str) -> dict[str, str]:
    """The environment the local runner gives a job (minus its JOBFERRY_* variables)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": workdir,
    }
    env.update((k, os.environ[k]) for k in ("TMPDIR", "USER", "LOGNAME") if k in os.environ)
    return env


def key_session(key: str) -> requests.Session:
    """A ``requests`` session sending *key* as a bearer token (set-up and simple clients)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    return session


class Managed:
    """A subprocess this benchmark started; stopped by its pid, never by name."""

    registry: list[Managed] = []

    def __init__(self, name: str, log_path: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        Managed.registry.append(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return "(no log)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Signal the process and wait for it; SIGKILL after *timeout_s*."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {proc.pid}) ignored signal {sig}: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    @classmethod
    def stop_all(cls) -> None:
        for managed in reversed(cls.registry):
            try:
                managed.stop()
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {managed.name}: {exc}")


class ScriptServer(Managed):
    """A small Python server in its own process that prints its port on its first line."""

    def __init__(self, name: str, code: str, args: list[str], log_path: Path | None = None):
        super().__init__(name, log_path)
        self.code = code
        self.args = args
        self.port = 0
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> ScriptServer:
        with contextlib.ExitStack() as stack:
            err: Any = subprocess.DEVNULL
            if self.log_path is not None:
                err = stack.enter_context(open(self.log_path, "ab"))
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.code, *self.args],
                stdout=subprocess.PIPE,
                stderr=err,
                env=daemon_env(),
            )
        assert self.proc.stdout is not None
        limit = time.monotonic() + timeout_s
        line = b""
        while time.monotonic() < limit and not line:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited at start: {self.log_tail()}")
        if not line.strip().isdigit():
            raise BenchError(f"{self.name} did not start: {self.log_tail()}")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def conn(self) -> HttpConn:
        return HttpConn("127.0.0.1", self.port)


#: Runs ``jobferry.cli.main`` with cProfile in every thread (argv: OUT jobferry-args...).
PROFILED_MAIN = """
import cProfile, pstats, sys, threading
out = sys.argv[1]
profiles = []
def _start(frame, event, arg):
    sys.setprofile(None)
    prof = cProfile.Profile()
    profiles.append(prof)
    prof.enable()
threading.setprofile(_start)
from jobferry.cli import main
main_prof = cProfile.Profile()
main_prof.enable()
code = 1
try:
    code = main(sys.argv[2:])
finally:
    main_prof.disable()
    stats = pstats.Stats(main_prof)
    for prof in profiles:
        try:
            stats.add(prof)
        except Exception as exc:
            print("profile of a thread lost:", exc, file=sys.stderr)
    stats.dump_stats(out)
sys.exit(code)
"""


class Daemon(Managed):
    """``jobferry serve --port 0`` with its data in ``workdir/name`` (log, config next to it).

    The data directory may exist already (a store seeded before the start); a
    stopped daemon can be started again on it. With *tree*, the daemon (and its
    CLI runs) use that checkout's ``jobferry`` instead of this one's. Jobs noted in ``jobs`` are
    cancelled (through the CLI) before the daemon stops: a long job would
    outlive it.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        config: dict[str, Any] | None = None,
        profile_path: Path | None = None,
        tree: Path | None = None,
    ) -> None:
        super().__init__(name, workdir / f"{name}.log")
        self.tree = tree or ROOT
        self.data_dir = workdir / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / f"{name}.yml"
            self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.profile_path = profile_path
        self.url = ""
        self.host = ""
        self.port = 0
        self.key = ""
        self.jobs: list[str] = []

    def args(self, *args: str) -> list[str]:
        """``jobferry ARGS`` on this daemon's data dir and config."""
        out = [*args, "--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            out += ["--config", str(self.config_path)]
        return out

    def start(self, timeout_s: float = 60.0) -> Daemon:
        """Start it and wait (at most *timeout_s*) until it serves; blocking."""
        state = self.data_dir / "daemon.json"
        state.unlink(missing_ok=True)
        args = self.args("serve", "--port", "0")
        if self.profile_path is not None:
            cmd = [sys.executable, "-c", PROFILED_MAIN, str(self.profile_path), *args]
        else:
            cmd = [sys.executable, "-m", "jobferry.cli", *args]
        assert self.log_path is not None
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=daemon_env(self.tree), cwd=self.tree
            )
        limit = time.monotonic() + timeout_s
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited at start: {self.log_tail()}")
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                info = json.loads(state.read_text())
                if info["pid"] == self.proc.pid:
                    self.url = str(info["url"])
                    break
            time.sleep(0.05)
        else:
            raise BenchError(f"{self.name} did not start in {timeout_s:.0f}s: {self.log_tail()}")
        host, _, port = self.url.split("://", 1)[1].rpartition(":")
        self.host, self.port = host, int(port)
        key_file = self.data_dir / "admin-api-key"
        # Written by the daemon that created the admin: on a shared store, the first node only.
        self.key = key_file.read_text().strip() if key_file.exists() else ""
        return self

    async def start_async(self, timeout_s: float = 60.0) -> Daemon:
        """``start`` without blocking the event loop."""
        return await asyncio.to_thread(self.start, timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Cancel the jobs noted in ``jobs``, then stop the daemon."""
        for job_id in self.jobs:
            try:
                self.cli("job", "cancel", job_id)
            except (BenchError, subprocess.SubprocessError) as exc:
                log(f"could not cancel job {job_id}: {exc}")
        self.jobs = []
        return super().stop(sig, timeout_s)

    def cli(self, *args: str) -> str:
        """Run ``jobferry ARGS`` on this daemon's store; its stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "jobferry.cli", *self.args(*args)],
            capture_output=True,
            text=True,
            timeout=60,
            env=daemon_env(self.tree),
            cwd=self.tree,
        )
        if result.returncode != 0:
            raise BenchError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def session(self) -> requests.Session:
        """A ``requests`` session with the admin key."""
        return key_session(self.key)

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        """One admin request with ``requests`` (set-up, not measured); 200 expected."""
        headers = {"Authorization": f"Bearer {self.key}"}
        response = requests.request(method, self.url + path, headers=headers, timeout=60, **kw)
        if response.status_code != 200:
            raise BenchError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    def register(self, script: Path, name: str | None = None) -> str:
        """Register *script* (field name = *name* or the script's stem); return its slug."""
        with open(script, "rb") as handle:
            files = {name or script.stem: (script.name, handle)}
            response = self.api("POST", "/api/scripts/v1/add-or-update/", files=files)
        answer = response.json()[0]
        if not answer.get("success"):
            raise BenchError(f"registering {script.name} failed: {response.text}")
        return str(answer["slug"])

    def conn(self) -> HttpConn:
        """A keep-alive connection with the admin key (the load generator's)."""
        return HttpConn(self.host, self.port, {"Authorization": f"Bearer {self.key}"})

    def cpu(self) -> tuple[float, float]:
        """(the daemon's own CPU seconds, CPU seconds of its reaped children)."""
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system, times.children_user + times.children_system


@dataclass
class Run:
    """One run of a benchmark: its workspace and its timestamp (result file names)."""

    workdir: Path
    stamp: str
    t0: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0


@contextlib.contextmanager
def bench_run(prefix: str, keep: bool = False) -> Iterator[Run]:
    """A benchmark's run: SIGTERM acts as Ctrl-C; at the end, whatever happened, every
    process started through ``Managed`` is stopped by pid and the workspace removed
    (kept with *keep*)."""
    interrupt_on_sigterm()
    with workspace(prefix, keep) as workdir:
        try:
            yield Run(workdir, stamp())
        finally:
            Managed.stop_all()
