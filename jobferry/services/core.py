"""The service core: configuration, store, executor, runners and paths in one object.

Services receive a ``Core``; the daemon, the API and the CLI each build one.
Blocking work (SQL, file copies, process control) runs through ``Core.call``,
which hands it to a thread pool so the event loop never waits on it. What a
service needs from the daemon (starting or queueing a submission, hearing of a
callback) is no hook on the core: it is given through the service's constructor
as a protocol of ``jobferry.services.ports``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from jobferry.config import Config
from jobferry.runners.base import Capacity, Runner
from jobferry.services.routing import Router
from jobferry.store.engine import SessionFactory, make_engine, make_session_factory
from jobferry.store.models import Setting, utcnow
from jobferry.store.records import JobEnd

if TYPE_CHECKING:
    from jobferry.services.telemetry import Telemetry

logger = logging.getLogger(__name__)

T = TypeVar("T")


def count_gpus() -> int:
    """GPUs nvidia-smi lists; 0 without nvidia-smi or when it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user resolved from an API key."""

    user_id: str
    username: str
    is_admin: bool


class Core:
    """Shared state of one jobferry process (daemon or CLI)."""

    def __init__(
        self,
        config: Config,
        *,
        engine: Engine | None = None,
        runners: dict[str, Runner] | None = None,
        node_name: str | None = None,
    ) -> None:
        self.config = config
        self.engine = engine or make_engine(config.database_url, config.database.pool_size)
        self.sessions: SessionFactory = make_session_factory(self.engine)
        self.runners: dict[str, Runner] = runners if runners is not None else {}
        self.node_name = node_name or config.node.name or socket.gethostname()
        self.router = Router(config)
        self.data_path = config.data_path
        self.jobs_path = self.data_path / "jobs"
        self.scripts_path = self.data_path / "scripts"
        self.tmp_path = self.data_path / "tmp"
        self.executor = ThreadPoolExecutor(
            max_workers=config.database.pool_size + 2, thread_name_prefix="jobferry-worker"
        )
        self._secret: bytes | None = None
        self._job_waiters: dict[str, list[asyncio.Future[JobEnd | None]]] = {}
        #: Bumped whenever this process changes scripts, to drop cached versions.
        self.scripts_generation = 0

    def ensure_dirs(self) -> None:
        for path in (self.data_path, self.jobs_path, self.scripts_path, self.tmp_path):
            path.mkdir(parents=True, exist_ok=True)
        self.data_path.chmod(0o700)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking *fn* in the worker pool and await its result.

        *fn* runs in a copy of the caller's context (``run_in_executor`` copies none),
        so what it logs carries the caller's request id or job (context variables)."""
        return await self.future(fn, *args, **kwargs)

    def future(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """``call``, as a future: for a caller that must see its outcome even when it is
        cancelled itself (it shields the future and adds a done callback). On the loop."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return loop.run_in_executor(self.executor, call)

    # --- waiting for a job to change -------------------------------------------------

    def job_changed(self, job_id: str, ended: JobEnd | None = None) -> None:
        """Wake whoever waits on *job_id* (call on the event loop), telling them how it
        *ended* when the caller just recorded that (else they re-read the store)."""
        for waiter in self._job_waiters.pop(job_id, []):
            if not waiter.done():
                waiter.set_result(ended)

    async def wait_job_change(self, job_id: str, timeout_s: float) -> JobEnd | None:
        """Return when this daemon sees *job_id* change, or after *timeout_s*: the
        job's end if the change was its end as recorded here, else None.

        Only this daemon's own scheduler signals; callers re-read the store on None,
        so a change made elsewhere is seen at the latest when the timeout ends.
        """
        waiter: asyncio.Future[JobEnd | None] = asyncio.get_running_loop().create_future()
        self._job_waiters.setdefault(job_id, []).append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._job_waiters.get(job_id)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._job_waiters[job_id]

    @functools.cached_property
    def node_capacity(self) -> Capacity:
        """What this node offers local and Docker jobs (config ``node``, else measured)."""
        node = self.config.node
        memory = node.memory_mb or psutil.virtual_memory().total // (1024 * 1024)
        gpus = node.gpus if node.gpus is not None else count_gpus()
        return Capacity(
            node.cores or os.cpu_count() or 1, memory, gpus, where=f"node {self.node_name}"
        )

    @functools.cached_property
    def telemetry(self) -> Telemetry:
        """This process's metrics (``services.telemetry``), made on first use."""
        from jobferry import __version__
        from jobferry.services.telemetry import Telemetry

        return Telemetry(self.config.metrics, self.node_name, __version__)

    def capacity_for(self, runner: str) -> Capacity | None:
        """The largest job *runner* could ever take (None: unknown, let the runner judge)."""
        if runner in ("local", "docker"):
            return self.node_capacity
        found = self.runners.get(runner)
        return found.capacity() if found is not None else None

    def require_files_here(self, home_node: str | None) -> None:
        """Check that a job's files can be served by this node; else raise
        ElsewhereError (the live node holding them) or NodeDownError. Blocking.

        With ``node.shared_filesystem`` every node sees every job directory."""
        if self.config.node.shared_filesystem or home_node in (None, self.node_name):
            return
        from jobferry.errors import ElsewhereError, NodeDownError
        from jobferry.store.models import Node, NodeState

        with self.sessions.begin() as session:
            node = session.get(Node, home_node)
            if node is None or not node.url:
                raise NodeDownError(f"node {home_node!r}, which holds this job's files, is unknown")
            alive_since = utcnow() - timedelta(seconds=self.config.node.dead_after_s)
            heartbeat = node.heartbeat_at
            if node.state in (NodeState.DEAD.value, NodeState.STOPPED.value) or (
                heartbeat is None or heartbeat < alive_since
            ):
                raise NodeDownError(
                    f"node {home_node!r}, which holds this job's files, is down "
                    f"(state {node.state}, last heartbeat {heartbeat or 'never'})"
                )
            raise ElsewhereError(
                f"this job's files are on node {home_node!r}", node_url=node.url, node=home_node
            )

    def runner(self, name: str) -> Runner:
        from jobferry.errors import RunnerUnavailableError

        try:
            return self.runners[name]
        except KeyError:
            raise RunnerUnavailableError(f"runner {name!r} is not configured here") from None

    # --- job keys -------------------------------------------------------------------

    @property
    def secret(self) -> bytes:
        """The store-wide secret that job keys derive from (created on first use)."""
        if self._secret is None:
            self._secret = self._load_secret()
        return self._secret

    def _load_secret(self) -> bytes:
        with self.sessions.begin() as session:
            row = session.execute(select(Setting).where(Setting.key == "job_key_secret")).scalar()
            if row is not None:
                return bytes.fromhex(row.value)
        value = secrets.token_hex(32)
        try:
            with self.sessions.begin() as session:
                session.add(Setting(key="job_key_secret", value=value))
        except IntegrityError:
            pass  # another process created it first; read theirs
        with self.sessions.begin() as session:
            stored = session.execute(select(Setting.value).where(Setting.key == "job_key_secret"))
            return bytes.fromhex(stored.scalar_one())

    def job_key(self, job_id: str) -> str:
        """The key that opens this one job's files and callbacks (HMAC of its id)."""
        return hmac.new(self.secret, job_id.encode(), hashlib.sha256).hexdigest()

    def check_job_key(self, job_id: str, key: str) -> bool:
        return hmac.compare_digest(self.job_key(job_id), key)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_path / job_id[:2] / job_id

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
        for runner in self.runners.values():
            runner.close()
        self.sessions.dispose()
        self.engine.dispose()
