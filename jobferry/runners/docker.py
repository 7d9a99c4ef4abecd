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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import requests
from docker.types import DeviceRequest, Mount  # type: ignore[import-untyped]

from jobferry.errors import ConfigError, RunnerError, RunnerUnavailableError, SubmitError
from jobferry.runners.base import RunHandle, RunMetrics, Runner, RunSpec, RunState, RunStatus
from jobferry.runners.joblog import job_of
from jobferry.runners.wrapper import (
    read_kill,
    read_result,
    record_kill,
    wrapper_argv,
    wrapper_paths,
)

logger = logging.getLogger(__name__)

LABEL_JOB = "jobferry.job_id"
LABEL_ATTEMPT = "jobferry.attempt"
LABEL_NODE = "jobferry.node"
LABEL_DESTINATION = "jobferry.destination"

#: The uid:gid jobs run as when neither configured nor inherited from a non-root daemon.
NOBODY = "65534:65534"

_LOST_REASON = "container ended without recording a result"
_GONE_REASON = "container is gone and no result was recorded"
_RUNNING_STATES = frozenset({"created", "running", "paused", "restarting"})
_SAMPLE_FIRST_S = 0.25
_SAMPLE_MAX_S = 5.0
_STALE_SUFFIXES = ("", ".tmp", ".killed", ".killed.tmp", ".pid")


@dataclass(frozen=True)
class _Job:
    """The fields of a handle's ``data`` this runner relies on."""

    container_id: str
    name: str
    result_path: str
    walltime_s: float | None
    memory_mb: int | None
    user: str

    @classmethod
    def of(cls, handle: RunHandle) -> _Job:
        try:
            data = handle.data
            walltime = data.get("walltime_s")
            memory = data.get("memory_mb")
            return cls(
                container_id=handle.external_id,
                name=str(data["name"]),
                result_path=str(data["result_path"]),
                walltime_s=None if walltime is None else float(walltime),
                memory_mb=None if memory is None else int(memory),
                user=str(data.get("user") or NOBODY),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RunnerError(f"malformed docker run handle {handle.external_id!r}") from exc


def container_name(job_id: str, attempt: int) -> str:
    """The deterministic container name of a job's attempt (only Docker-legal characters)."""
    return f"jobferry-{re.sub(r'[^A-Za-z0-9_.-]', '_', job_id)}-{attempt}"


def _parse_user(user: str) -> tuple[int, int]:
    """``"uid:gid"`` or ``"uid"`` (gid -1: leave the group) as numbers."""
    uid, _, gid = user.partition(":")
    try:
        return int(uid), int(gid) if gid else -1
    except ValueError as exc:
        raise ConfigError(f"runners.docker.user must be numeric uid[:gid], not {user!r}") from exc


def _epoch(text: str | None) -> float | None:
    """An engine timestamp (RFC 3339, nanoseconds) as epoch seconds; None if unset."""
    if not text or text.startswith("0001-01-01"):
        return None
    # Python's fromisoformat takes at most microseconds: cut the fraction to 6 digits.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _chown_tree(root: str, uid: int, gid: int) -> None:
    """Give *root* and everything under it to uid:gid, never following symlinks."""
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


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
            _parse_user(user)
        elif os.geteuid() != 0:
            user = f"{os.geteuid()}:{os.getegid()}"
        self.user = user or NOBODY
        self.timeout_s = timeout_s
        self.node = node or socket.gethostname()
        self.kill_grace_s = kill_grace_s
        self.pids_limit = pids_limit
        self.max_waiters = max_waiters
        self._client_obj: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._killed: dict[str, str] = {}  # container id -> cancel reason
        self._final: dict[str, RunStatus] = {}  # container id -> final status once known
        self._peak: dict[str, int] = {}  # container id -> highest memory sample (bytes)
        self._lock = threading.Lock()

    # --- the engine -------------------------------------------------------------

    def _client(self) -> Any:
        """The engine client, created on first use. Raises RunnerUnavailableError."""
        with self._lock:
            if self._client_obj is not None:
                return self._client_obj
            # The SDK leaks its socket when a unix socket does not answer: try it first.
            if self.base_url.startswith("unix://"):
                path = self.base_url[len("unix://") :]
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                        sock.settimeout(self.timeout_s)
                        sock.connect(path)
                except OSError as exc:
                    raise RunnerUnavailableError(
                        f"docker engine at {self.base_url} is unreachable: {exc}"
                    ) from exc
            # Ask for the server's API version ourselves, for the same reason
            # (DockerClient(version="auto") does not close what it opened on failure).
            probe = docker.DockerClient(
                base_url=self.base_url,
                version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                timeout=self.timeout_s,
            )
            try:
                version = str(probe.api.version(api_version=False)["ApiVersion"])
            except (requests.RequestException, docker.errors.DockerException, KeyError) as exc:
                raise RunnerUnavailableError(
                    f"docker engine at {self.base_url} is unreachable: {exc}"
                ) from exc
            finally:
                probe.close()
            self._client_obj = docker.DockerClient(
                base_url=self.base_url,
                version=version,
                timeout=self.timeout_s,
                max_pool_size=max(10, self.max_waiters + 4),
            )
            return self._client_obj

    @contextlib.contextmanager
    def _engine(self, what: str) -> Iterator[Any]:
        """Yield the low-level API client; connection trouble becomes RunnerUnavailableError."""
        api = self._client().api
        try:
            yield api
        except docker.errors.APIError:  # an HTTPError too, but the engine did answer
            raise
        except requests.RequestException as exc:
            raise RunnerUnavailableError(
                f"docker engine at {self.base_url} failed to {what}: {exc}"
            ) from exc

    def _inspect(self, ref: str) -> dict[str, Any] | None:
        """The container's inspect data; None if it does not exist."""
        with self._engine("inspect a container") as api:
            try:
                return dict(api.inspect_container(ref))
            except docker.errors.NotFound:
                return None
            except docker.errors.APIError as exc:
                raise RunnerError(f"cannot inspect container {ref}: {_explain(exc)}") from exc

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
        job_dir = "" if remote else self._shared_dir(spec)
        for suffix in _STALE_SUFFIXES:
            stale = spec.result_path + suffix
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise SubmitError(f"cannot remove stale {stale}: {exc}") from exc
        self._ensure_image(spec.image)
        if job_dir and os.geteuid() == 0:
            uid, gid = _parse_user(self.user)
            try:
                _chown_tree(job_dir, uid, gid)
            except OSError as exc:
                raise SubmitError(f"cannot hand {job_dir} to {self.user}: {exc}") from exc
        workdir = wrapper_paths(spec)[0]
        argv = wrapper_argv(spec)
        labels = {
            LABEL_JOB: spec.job_id,
            LABEL_ATTEMPT: str(spec.attempt),
            LABEL_NODE: self.node,
            LABEL_DESTINATION: spec.destination,
        }
        host: dict[str, Any] = {
            "network_mode": "host" if spec.network else "none",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "privileged": False,
            "pids_limit": self.pids_limit,
            "nano_cpus": max(1, spec.cores) * 1_000_000_000,
        }
        if spec.memory_mb:
            host["mem_limit"] = host["memswap_limit"] = f"{spec.memory_mb}m"
        if spec.gpus > 0:
            host["device_requests"] = [DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
        if job_dir:
            host["mounts"] = [Mount(target=job_dir, source=job_dir, type="bind")]
        name = container_name(spec.job_id, spec.attempt)
        client = self._client()
        try:
            with self._engine("create a container"):
                container = client.containers.create(
                    spec.image,
                    command=argv[1:],
                    entrypoint=argv[:1],
                    name=name,
                    labels=labels,
                    environment={"HOME": workdir, **spec.env},
                    user=self.user,
                    working_dir=None if remote else spec.workdir,
                    stdin_open=False,
                    tty=False,
                    **host,
                )
        except docker.errors.ImageNotFound as exc:
            raise SubmitError(f"image {spec.image} is not available locally") from exc
        except docker.errors.APIError as exc:
            raise SubmitError(f"cannot create container {name}: {_explain(exc)}") from exc
        started_at = time.time()
        try:
            with self._engine("start a container"):
                container.start()
        except (docker.errors.APIError, RunnerUnavailableError) as exc:
            with contextlib.suppress(docker.errors.APIError, requests.RequestException):
                container.remove(force=True)
            if isinstance(exc, RunnerUnavailableError):
                raise
            raise SubmitError(f"cannot start container {name}: {_explain(exc)}") from exc
        data: dict[str, Any] = {
            "name": name,
            "result_path": spec.result_path,
            "stdout_path": spec.stdout_path,
            "stderr_path": spec.stderr_path,
            "walltime_s": spec.walltime_s,
            "memory_mb": spec.memory_mb,
            "user": self.user,
        }
        logger.info("started job %s in container %s (%s)", spec.job_id, name, container.id[:12])
        return RunHandle(self.name, str(container.id), started_at, data)

    @staticmethod
    def _shared_dir(spec: RunSpec) -> str:
        """The directory to bind-mount: ``job_dir``, else the common parent of the job's paths."""
        paths = [spec.workdir, spec.stdout_path, spec.stderr_path, spec.result_path]
        if not all(os.path.isabs(p) for p in paths):
            raise SubmitError(f"job {spec.job_id}: paths must be absolute for docker")
        job_dir = os.path.normpath(
            spec.job_dir or os.path.commonpath([spec.workdir] + [os.path.dirname(p) for p in paths])
        )
        if job_dir == "/" or not os.path.isabs(job_dir):
            raise SubmitError(f"job {spec.job_id}: refusing to mount {job_dir!r} into a container")
        if not os.path.isdir(spec.workdir):
            raise SubmitError(f"working directory {spec.workdir} does not exist")
        for path in paths:
            if os.path.commonpath([job_dir, os.path.normpath(path)]) != job_dir:
                raise SubmitError(f"{path} is outside the job directory {job_dir}")
            if path != spec.workdir and not os.path.isdir(os.path.dirname(path)):
                raise SubmitError(f"directory for {path} does not exist")
        return job_dir

    def _ensure_image(self, image: str) -> None:
        """Make sure *image* is present, pulling it if allowed."""
        client = self._client()
        with self._engine("look up an image"):
            try:
                client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:
                raise SubmitError(f"cannot look up image {image}: {_explain(exc)}") from exc
        if not self.pull:
            raise SubmitError(
                f"image {image} is not available locally and pulling is disabled"
                " (runners.docker.pull)"
            )
        logger.info("pulling image %s", image)
        with self._engine("pull an image"):
            try:
                client.images.pull(image)
            except docker.errors.APIError as exc:
                raise SubmitError(f"cannot pull image {image}: {_explain(exc)}") from exc

    def find(self, spec: RunSpec) -> RunHandle | None:
        """Find this node's container for (job id, attempt) by its labels. Blocking.

        A container that was created but never started is removed (the job never
        ran, so it may be queued again). Containers are only removed by ``cancel``
        and ``cleanup``, so no container means the job never started.

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        filters = {
            "label": [
                f"{LABEL_JOB}={spec.job_id}",
                f"{LABEL_ATTEMPT}={spec.attempt}",
                f"{LABEL_NODE}={self.node}",
            ]
        }
        with self._engine("list containers") as api:
            found = api.containers(all=True, filters=filters)
        data: dict[str, Any] = {
            "name": container_name(spec.job_id, spec.attempt),
            "result_path": spec.result_path,
            "stdout_path": spec.stdout_path,
            "stderr_path": spec.stderr_path,
            "walltime_s": spec.walltime_s,
            "memory_mb": spec.memory_mb,
            "user": self.user,
        }
        for row in found:
            cid = str(row["Id"])
            attrs = self._inspect(cid)
            if attrs is None:
                continue
            state = attrs.get("State") or {}
            if state.get("Status") == "created":
                logger.info("removing never-started container %s of job %s", cid[:12], spec.job_id)
                self._remove(cid)
                continue
            data["user"] = (attrs.get("Config") or {}).get("User") or self.user
            started_at = _epoch(state.get("StartedAt")) or float(row.get("Created") or 0)
            return RunHandle(self.name, cid, started_at, data)
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
        job = _Job.of(handle)
        try:
            if self._inspect(job.container_id) is None:
                logger.warning("container %s of job %s is gone", job.name, spec.job_id)
        except RunnerUnavailableError as exc:
            logger.warning("cannot check container %s now: %s", job.name, exc.message)

    def containers(self) -> list[tuple[str, int, str]]:
        """(job id, attempt, container id) of every container of this node, by label.

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        with self._engine("list containers") as api:
            rows = api.containers(all=True, filters={"label": [f"{LABEL_NODE}={self.node}"]})
        out = []
        for row in rows:
            labels = row.get("Labels") or {}
            try:
                out.append((str(labels[LABEL_JOB]), int(labels[LABEL_ATTEMPT]), str(row["Id"])))
            except (KeyError, ValueError):
                logger.warning("container %s has malformed jobferry labels", row.get("Id"))
        return out

    def leftovers(self) -> list[tuple[str, RunHandle]]:
        """(job id, handle) of every container of this node, for ``cleanup`` of those
        whose job already ended (e.g. while the daemon was down). Blocking.

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        return [
            (job_id, RunHandle(self.name, cid, 0.0, {"name": container_name(job_id, attempt)}))
            for job_id, attempt, cid in self.containers()
        ]

    # --- status -------------------------------------------------------------------

    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's status from the container and the result file. Blocking.

        Raises:
            RunnerUnavailableError: the engine does not answer.
            RunnerError: the handle is malformed.
        """
        job = _Job.of(handle)
        with self._lock:
            final = self._final.get(job.container_id)
        if final is not None:
            return final
        attrs = self._inspect(job.container_id)
        if attrs is not None and _running(attrs):
            return RunStatus(RunState.RUNNING)
        return self._conclude(handle, job, attrs)

    def _conclude(self, handle: RunHandle, job: _Job, attrs: dict[str, Any] | None) -> RunStatus:
        """Build and cache the final status from the ended (or gone) container and files."""
        state = (attrs or {}).get("State") or {}
        result = read_result(job.result_path)
        with self._lock:
            killed = self._killed.get(job.container_id)
        if killed is None:
            killed = read_kill(job.result_path)
        container_code = state.get("ExitCode") if attrs is not None else None
        exit_code = None if result is None else result.exit_code
        if exit_code is None and isinstance(container_code, int):
            exit_code = container_code
        started = _epoch(state.get("StartedAt")) or handle.started_at
        finished = _epoch(state.get("FinishedAt"))
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
            peak = self._peak.get(job.container_id)
        known = attrs is not None or result is not None
        metrics = RunMetrics(
            wall_s=max(0.0, finished - started) if known else None,
            cpu_user_s=None if result is None else result.cpu_user_s,
            cpu_sys_s=None if result is None else result.cpu_sys_s,
            peak_rss_kb=None if peak is None else peak // 1024,
        )
        final = RunStatus(status, exit_code, reason, finished, metrics)
        with self._lock:
            self._final[job.container_id] = final
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

    def _sample(self, job: _Job) -> None:
        """Record the container's memory high-water mark from the engine's stats."""
        with self._engine("read container stats") as api:
            try:
                stats = api.stats(job.container_id, stream=False, one_shot=True)
            except docker.errors.APIError:
                return
        memory = (stats or {}).get("memory_stats") or {}
        value = max(int(memory.get("max_usage") or 0), int(memory.get("usage") or 0))
        if value > 0:
            with self._lock:
                self._peak[job.container_id] = max(value, self._peak.get(job.container_id, 0))

    def _sample_loop(self, job: _Job, stop: threading.Event) -> None:
        """Sample memory until *stop* (at once, then every 0.25 s doubling to 5 s). In
        its own thread: a stats call can take a second, and must never delay
        noticing the end of the container."""
        delay = _SAMPLE_FIRST_S
        while not stop.is_set():
            try:
                self._sample(job)
            except RunnerUnavailableError:
                pass
            stop.wait(delay)
            delay = min(delay * 2, _SAMPLE_MAX_S)

    def _wait_step(self, job: _Job, timeout: float) -> bool:
        """Block on the engine up to *timeout*; True once it has ended."""
        try:
            with self._engine("wait for a container") as api:
                api.wait(job.container_id, timeout=max(0.01, timeout))
            return True
        except docker.errors.NotFound:
            return True
        except RunnerUnavailableError as exc:
            # A read timeout looks just like an engine that went away: either way, again later.
            if "timed out" not in str(exc):
                logger.warning(
                    "job %s: waiting for %s: %s", job_of(job.result_path), job.name, exc.message
                )
                time.sleep(timeout)
            return False
        except docker.errors.APIError as exc:
            logger.warning(
                "job %s: waiting for %s: %s", job_of(job.result_path), job.name, _explain(exc)
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
        job = _Job.of(handle)
        loop = asyncio.get_running_loop()
        deadline = None if job.walltime_s is None else handle.started_at + job.walltime_s
        step = _SAMPLE_FIRST_S
        stop = threading.Event()
        sampler = loop.run_in_executor(self._waiters(), self._sample_loop, job, stop)
        try:
            return await self._wait_end(handle, job, deadline, step)
        finally:
            stop.set()
            sampler.cancel()

    async def _wait_end(
        self, handle: RunHandle, job: _Job, deadline: float | None, step: float
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
            ended = await loop.run_in_executor(self._waiters(), self._wait_step, job, timeout)
            step = min(step * 2, _SAMPLE_MAX_S)
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
        job = _Job.of(handle)
        attrs = self._inspect(job.container_id)
        if attrs is None or not _running(attrs) or os.path.exists(job.result_path):
            return
        with self._lock:
            self._killed.setdefault(job.container_id, reason)
        record_kill(job.result_path, reason)
        logger.info("job %s: stopping container %s: %s", job_of(job.result_path), job.name, reason)
        with self._engine("stop a container") as api:
            # The wrapper is PID 1 and ignores SIGTERM until the job ends, so signal
            # every other process of the container from inside, as the job's user.
            try:
                exec_id = api.exec_create(
                    job.container_id, ["/bin/sh", "-c", "kill -TERM -1"], user=job.user
                )
                api.exec_start(exec_id)
            except docker.errors.APIError as exc:  # not running any more, or no /bin/sh
                logger.debug(
                    "job %s: SIGTERM to %s failed: %s",
                    job_of(job.result_path),
                    job.name,
                    _explain(exc),
                )
            try:
                api.wait(job.container_id, timeout=max(0.01, self.kill_grace_s))
            except docker.errors.APIError:  # gone already
                pass
            except requests.RequestException:  # still running after the grace time
                with contextlib.suppress(docker.errors.APIError):
                    api.kill(job.container_id)
                with contextlib.suppress(docker.errors.APIError):
                    api.wait(job.container_id, timeout=math.ceil(self.timeout_s))
        attrs = self._inspect(job.container_id)
        self._conclude(handle, job, attrs)
        self._remove(job.container_id)

    def _remove(self, ref: str) -> None:
        with self._engine("remove a container") as api:
            try:
                api.remove_container(ref, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # removal already in progress
                    raise RunnerError(f"cannot remove container {ref}: {_explain(exc)}") from exc

    def cleanup(self, handle: RunHandle) -> None:
        """Remove the finished job's container and forget it. Idempotent.

        Needs only the handle's ``external_id`` (handles from ``leftovers`` have no more).

        Raises:
            RunnerUnavailableError: the engine does not answer.
        """
        if handle.runner != self.name:
            raise RunnerError(f"cannot clean up a {handle.runner!r} handle in the docker runner")
        cid = handle.external_id
        self._remove(cid)
        with self._lock:
            self._final.pop(cid, None)
            self._killed.pop(cid, None)
            self._peak.pop(cid, None)

    def remove(self, container_id: str) -> None:
        """Remove one container by id (running or not), e.g. one from ``containers()``."""
        self._remove(container_id)

    def close(self) -> None:
        """Stop the wait threads and close the engine client (containers keep running)."""
        with self._lock:
            executor, self._executor = self._executor, None
            client, self._client_obj = self._client_obj, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()


def _running(attrs: dict[str, Any]) -> bool:
    state = attrs.get("State") or {}
    return bool(state.get("Running")) or state.get("Status") in _RUNNING_STATES


def _explain(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)
