"""The Docker runner: each job in its own container on a Docker engine.

The container runs the job wrapper (``wrapper_argv``) as a non-root user, without
capabilities or new privileges, without network unless the destination asks for it,
and with the job's CPU, memory and pids limits. With shared staging the job's
directory is bind-mounted at the same path, so the result file, stdout and stderr
land where the daemon reads them; with remote staging nothing of the daemon's disk
is mounted and the wrapper stages over HTTP by itself.

Containers carry labels (``jobferry.job_id``, ``jobferry.attempt``, ``jobferry.node``,
``jobferry.destination``) and a deterministic name (``jobferry-<job id>-<attempt>``),
so a restarted daemon finds them again (``find``, ``containers``). A finished
container stays until ``cleanup`` removes it, so its exit state (OOM kill, times)
survives a daemon restart; a cancelled one is removed by ``cancel`` itself, after
the reason is recorded in ``<result_path>.killed`` (as the local runner does).

Peak memory comes from the engine's stats (cgroup v1 ``memory_stats.max_usage``, a
high-water mark of the container's cgroup, page cache included; cgroup v2 only
reports the current ``usage``). It is sampled by ``wait`` while the container runs
(first at once, then every 0.25 s growing to 5 s) and kept in memory, so it is
``None`` for a job that nobody waited on or that ended before the first sample.

This module holds the runner's policy (when to start, wait, stop and remove, and
how an ended container becomes a ``RunStatus``); the container's shape is in
``runners.docker_spec`` and the engine calls in ``runners.docker_engine``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from jobferry.errors import RunnerError, RunnerUnavailableError, SubmitError
from jobferry.runners.base import (
    HandlePayload,
    RunHandle,
    RunMetrics,
    Runner,
    RunSpec,
    RunState,
    RunStatus,
)
from jobferry.runners.docker_engine import (
    SAMPLE_FIRST_S,
    SAMPLE_MAX_S,
    DockerEngine,
    epoch,
    running,
)
from jobferry.runners.docker_spec import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_NODE,
    NOBODY,
    chown_tree,
    container_name,
    create_args,
    parse_user,
    shared_dir,
)
from jobferry.runners.docker_spec import (
    LABEL_DESTINATION as LABEL_DESTINATION,  # re-exported: the runner's public names
)
from jobferry.runners.joblog import job_of
from jobferry.runners.wrapper import clear_stale, read_kill, read_result, record_kill

logger = logging.getLogger(__name__)

_LOST_REASON = "container ended without recording a result"
_GONE_REASON = "container is gone and no result was recorded"
_STALE_SUFFIXES = ("", ".tmp", ".killed", ".killed.tmp", ".pid")


@dataclass(frozen=True)
class DockerPayload(HandlePayload):
    """What a docker handle carries besides the container id (its ``external_id``).

    Handles from ``leftovers`` carry none: they only go to ``cleanup``.
    """

    runner: ClassVar[str] = "docker"

    name: str
    result_path: str
    stdout_path: str = ""
    stderr_path: str = ""
    walltime_s: float | None = None
    memory_mb: int | None = None
    user: str = NOBODY


class DockerRunner(Runner):
    """Runs each job in a container of ``spec.image`` on a Docker engine.

    Args:
        base_url: The engine's API address (``unix://`` socket or ``tcp://``).
        pull: Pull images that are not present locally (else submit fails).
        user: ``uid:gid`` jobs run as; default the daemon's own uid:gid when it is
            not root, else ``65534:65534``. Numeric only. When the daemon is root,
            the job's directory is handed to that user before the container starts;
            a non-root daemon cannot, so a configured user other than its own needs
            write access to the job directories some other way.
        timeout_s: Timeout of one engine API call.
        node: This daemon's node name, put on every container (``jobferry.node``).
        kill_grace_s: How long ``cancel`` waits after SIGTERM before SIGKILL.
        pids_limit: Most processes (and threads) a job may have at once.
        max_waiters: Threads that block on the engine for ``wait`` (one per job
            being waited on at a time; more jobs wait their turn).
    """

    name = "docker"

    def __init__(
        self,
        *,
        base_url: str = "unix:///var/run/docker.sock",
        pull: bool = False,
        user: str | None = None,
        timeout_s: float = 60.0,
        node: str | None = None,
        kill_grace_s: float = 5.0,
        pids_limit: int = 4096,
        max_waiters: int = 32,
    ) -> None:
        self.base_url = base_url
        self.pull = pull
        if user is not None:
            parse_user(user)
        elif os.geteuid() != 0:
            user = f"{os.geteuid()}:{os.getegid()}"
        self.user = user or NOBODY
        self.timeout_s = timeout_s
        self.node = node or socket.gethostname()
        self.kill_grace_s = kill_grace_s
        self.pids_limit = pids_limit
        self.max_waiters = max_waiters
        self.engine = DockerEngine(base_url, timeout_s, max_pool_size=max(10, max_waiters + 4))
        self._executor: ThreadPoolExecutor | None = None
        self._killed: dict[str, str] = {}  # container id -> cancel reason
        self._final: dict[str, RunStatus] = {}  # container id -> final status once known
        self._peak: dict[str, int] = {}  # container id -> highest memory sample (bytes)
        self._lock = threading.Lock()

    # --- submit / find / adopt ----------------------------------------------------

    def submit(self, spec: RunSpec) -> RunHandle:
        """Start the job in a new container and return its handle. Blocking; not idempotent.

        Raises:
            SubmitError: invalid argv, no image or the image is missing (and not
                pullable), the job's directories are missing, or the engine refuses
                the container.
            RunnerUnavailableError: the engine does not answer.
        """
        if not spec.argv or spec.argv[0].startswith("-"):
            raise SubmitError(f"invalid argv for job {spec.job_id}: {list(spec.argv)!r}")
        if not spec.image:
            raise SubmitError(f"no image configured for destination {spec.destination!r}")
        remote = spec.staging == "remote"
        if remote and not spec.remote_dir:
            raise SubmitError(f"job {spec.job_id}: remote staging needs a remote_dir")
        job_dir = "" if remote else shared_dir(spec)
        clear_stale(spec.result_path, _STALE_SUFFIXES)
        self.engine.ensure_image(spec.image, self.pull)
        if job_dir and os.geteuid() == 0:
            uid, gid = parse_user(self.user)
            try:
                chown_tree(job_dir, uid, gid)
            except OSError as exc:
                raise SubmitError(f"cannot hand {job_dir} to {self.user}: {exc}") from exc
        name = container_name(spec.job_id, spec.attempt)
        create = create_args(
            spec, job_dir=job_dir, user=self.user, node=self.node, pids_limit=self.pids_limit
        )
        container_id, started_at = self.engine.run(spec.image, name, create)
        logger.info("started job %s in container %s (%s)", spec.job_id, name, container_id[:12])
        return RunHandle.of(self.name, container_id, started_at, self._payload(spec, self.user))

    def _payload(self, spec: RunSpec, user: str) -> DockerPayload:
        return DockerPayload(
            name=container_name(spec.job_id, spec.attempt),
            result_path=spec.result_path,
            stdout_path=spec.stdout_path,
            stderr_path=spec.stderr_path,
            walltime_s=spec.walltime_s,
            memory_mb=spec.memory_mb,
            user=user,
        )

    def find(self, spec: RunSpec) -> RunHandle | None:
        """Find this node's container for (job id, attempt) by its labels. Blocking.

        A container that was created but never started is removed (the job never
        ran, so it may be queued again). Containers are only removed by ``cancel``
        and ``cleanup``, so no container means the job never started.

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        labels = [
            f"{LABEL_JOB}={spec.job_id}",
            f"{LABEL_ATTEMPT}={spec.attempt}",
            f"{LABEL_NODE}={self.node}",
        ]
        for row in self.engine.listed(labels):
            cid = str(row["Id"])
            attrs = self.engine.inspect(cid)
            if attrs is None:
                continue
            state = attrs.get("State") or {}
            if state.get("Status") == "created":
                logger.info("removing never-started container %s of job %s", cid[:12], spec.job_id)
                self.engine.remove(cid)
                continue
            user = (attrs.get("Config") or {}).get("User") or self.user
            started_at = epoch(state.get("StartedAt")) or float(row.get("Created") or 0)
            return RunHandle.of(self.name, cid, started_at, self._payload(spec, user))
        return None

    def adopt(self, handle: RunHandle, spec: RunSpec) -> None:
        """Check that *handle* is a well-formed docker handle. Blocking; idempotent.

        A container that is gone is not an error here (as with the local runner):
        ``poll``/``wait`` then report from the result file, or report the job lost.
        Neither is an engine that does not answer: ``wait`` retries until it does.

        Raises:
            RunnerError: the handle is not from a docker runner or is malformed.
        """
        if handle.runner != self.name:
            raise RunnerError(f"cannot adopt a {handle.runner!r} handle in the docker runner")
        job = DockerPayload.of(handle)
        try:
            if self.engine.inspect(handle.external_id) is None:
                logger.warning("container %s of job %s is gone", job.name, spec.job_id)
        except RunnerUnavailableError as exc:
            logger.warning("cannot check container %s now: %s", job.name, exc.message)

    def containers(self) -> list[tuple[str, int, str]]:
        """(job id, attempt, container id) of every container of this node, by label.

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        out = []
        for row in self.engine.listed([f"{LABEL_NODE}={self.node}"]):
            labels = row.get("Labels") or {}
            try:
                out.append((str(labels[LABEL_JOB]), int(labels[LABEL_ATTEMPT]), str(row["Id"])))
            except (KeyError, ValueError):
                logger.warning("container %s has malformed jobferry labels", row.get("Id"))
        return out

    def leftovers(self) -> list[tuple[str, RunHandle]]:
        """(job id, handle) of every container of this node, for ``cleanup`` of those
        whose job already ended (e.g. while the daemon was down). Blocking. The
        handles carry no payload: ``cleanup`` needs only the container id.

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        return [(job_id, RunHandle(self.name, cid, 0.0)) for job_id, _, cid in self.containers()]

    # --- status -------------------------------------------------------------------

    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's status from the container and the result file. Blocking.

        Raises:
            RunnerUnavailableError: the engine does not answer.
            RunnerError: the handle is malformed.
        """
        job = DockerPayload.of(handle)
        with self._lock:
            final = self._final.get(handle.external_id)
        if final is not None:
            return final
        attrs = self.engine.inspect(handle.external_id)
        if attrs is not None and running(attrs):
            return RunStatus(RunState.RUNNING)
        return self._conclude(handle, job, attrs)

    def _conclude(
        self, handle: RunHandle, job: DockerPayload, attrs: dict[str, Any] | None
    ) -> RunStatus:
        """Build and cache the final status from the ended (or gone) container and files."""
        state = (attrs or {}).get("State") or {}
        result = read_result(job.result_path)
        with self._lock:
            killed = self._killed.get(handle.external_id)
        if killed is None:
            killed = read_kill(job.result_path)
        container_code = state.get("ExitCode") if attrs is not None else None
        exit_code = None if result is None else result.exit_code
        if exit_code is None and isinstance(container_code, int):
            exit_code = container_code
        started = epoch(state.get("StartedAt")) or handle.started_at
        finished = epoch(state.get("FinishedAt"))
        if finished is None:
            finished = result.mtime if result is not None else time.time()
        reason: str | None
        if killed is not None:
            status, reason = RunState.KILLED, killed
        elif state.get("OOMKilled"):
            limit = f" (limit {job.memory_mb} MB)" if job.memory_mb else ""
            status, reason = RunState.KILLED, f"out of memory{limit}"
        elif result is not None and result.exit_code is not None:
            status, reason = RunState.EXITED, result.reason
        elif isinstance(container_code, int) and 0 <= container_code < 128:
            status, reason = RunState.EXITED, "result file missing; exit code from the container"
        else:
            status, exit_code = RunState.LOST, None
            reason = (result.reason if result is not None else None) or (
                _LOST_REASON if attrs is not None else _GONE_REASON
            )
            if isinstance(container_code, int):
                reason += f" (container exit code {container_code})"
        with self._lock:
            peak = self._peak.get(handle.external_id)
        known = attrs is not None or result is not None
        metrics = RunMetrics(
            wall_s=max(0.0, finished - started) if known else None,
            cpu_user_s=None if result is None else result.cpu_user_s,
            cpu_sys_s=None if result is None else result.cpu_sys_s,
            peak_rss_kb=None if peak is None else peak // 1024,
        )
        final = RunStatus(status, exit_code, reason, finished, metrics)
        with self._lock:
            self._final[handle.external_id] = final
        logger.info(
            "job %s ended: %s exit=%s%s (container %s)",
            job_of(job.result_path),
            status,
            exit_code,
            f" {reason}" if reason else "",
            job.name,
        )
        return final

    # --- waiting ------------------------------------------------------------------

    def _waiters(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.max_waiters, thread_name_prefix="jobferry-docker-wait"
                )
            return self._executor

    def _note_peak(self, container_id: str, value: int) -> None:
        with self._lock:
            self._peak[container_id] = max(value, self._peak.get(container_id, 0))

    def _wait_step(self, container_id: str, job: DockerPayload, timeout: float) -> bool:
        """Block on the engine up to *timeout*; True once it has ended."""
        try:
            return self.engine.wait(container_id, timeout)
        except RunnerError as exc:  # the engine went away or refused: again later
            logger.warning(
                "job %s: waiting for %s: %s", job_of(job.result_path), job.name, exc.message
            )
        time.sleep(timeout)
        return False

    async def wait(self, handle: RunHandle) -> RunStatus:
        """Wait for the container to end, enforce the walltime, return the final status.

        Blocks on the engine (``wait`` API calls of at most 5 s, in the runner's own
        threads) and samples peak memory in between. At the walltime it runs
        ``cancel`` with reason ``walltime exceeded (<N>s)``. Cancelling the coroutine
        leaves the container running. An engine that does not answer is retried.

        Raises:
            RunnerError: the handle is malformed.
        """
        job = DockerPayload.of(handle)
        loop = asyncio.get_running_loop()
        deadline = None if job.walltime_s is None else handle.started_at + job.walltime_s
        step = SAMPLE_FIRST_S
        stop = threading.Event()
        note = functools.partial(self._note_peak, handle.external_id)
        follow = self.engine.follow_memory
        sampler = loop.run_in_executor(self._waiters(), follow, handle.external_id, stop, note)
        try:
            return await self._wait_end(handle, job, deadline, step)
        finally:
            stop.set()
            sampler.cancel()

    async def _wait_end(
        self, handle: RunHandle, job: DockerPayload, deadline: float | None, step: float
    ) -> RunStatus:
        loop = asyncio.get_running_loop()
        while True:
            timeout = step
            if deadline is not None:
                remaining = deadline - time.time()
                if remaining <= 0:
                    reason = f"walltime exceeded ({job.walltime_s:g}s)"
                    try:
                        await loop.run_in_executor(None, self.cancel, handle, reason)
                        deadline = None
                    except RunnerUnavailableError as exc:
                        logger.warning(
                            "job %s: cannot stop %s at its walltime: %s",
                            job_of(job.result_path),
                            job.name,
                            exc.message,
                        )
                        await asyncio.sleep(step)
                    continue
                timeout = min(timeout, remaining)
            ended = await loop.run_in_executor(
                self._waiters(), self._wait_step, handle.external_id, job, timeout
            )
            step = min(step * 2, SAMPLE_MAX_S)
            if not ended:
                continue
            try:
                status = await loop.run_in_executor(None, self.poll, handle)
            except RunnerUnavailableError as exc:
                logger.warning(
                    "job %s: cannot read the end of %s: %s",
                    job_of(job.result_path),
                    job.name,
                    exc.message,
                )
                await asyncio.sleep(step)
                continue
            if status.is_final:
                return status

    # --- cancel / cleanup ---------------------------------------------------------

    def cancel(self, handle: RunHandle, reason: str = "cancelled") -> None:
        """Stop the job (SIGTERM to its processes, SIGKILL after the grace time), remove it.

        Blocking (up to ``kill_grace_s`` plus a little); idempotent. Does nothing if
        the container has already ended by itself or is gone. Records *reason* in
        memory and in ``<result_path>.killed`` so later ``poll``/``wait`` (also in a
        restarted daemon) report ``KILLED``.

        Raises:
            RunnerUnavailableError: the engine does not answer.
            RunnerError: the handle is malformed.
        """
        job = DockerPayload.of(handle)
        cid = handle.external_id
        attrs = self.engine.inspect(cid)
        if attrs is None or not running(attrs) or os.path.exists(job.result_path):
            return
        with self._lock:
            self._killed.setdefault(cid, reason)
        record_kill(job.result_path, reason)
        what = f"job {job_of(job.result_path)}: container {job.name}"
        logger.info("%s: stopping: %s", what, reason)
        self.engine.stop(cid, job.user, self.kill_grace_s, what)
        self._conclude(handle, job, self.engine.inspect(cid))
        self.engine.remove(cid)

    def cleanup(self, handle: RunHandle) -> None:
        """Remove the finished job's container and forget it. Idempotent.

        Needs only the handle's ``external_id`` (handles from ``leftovers`` have no more).

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        if handle.runner != self.name:
            raise RunnerError(f"cannot clean up a {handle.runner!r} handle in the docker runner")
        cid = handle.external_id
        self.engine.remove(cid)
        with self._lock:
            self._final.pop(cid, None)
            self._killed.pop(cid, None)
            self._peak.pop(cid, None)

    def remove(self, container_id: str) -> None:
        """Remove one container by id (running or not), e.g. one from ``containers()``."""
        self.engine.remove(container_id)

    def check_usable(self) -> str | None:  # the engine answers a ping, quickly
        return self.engine.ping()

    def close(self) -> None:
        """Stop the wait threads and close the engine client (containers keep running)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self.engine.close()
