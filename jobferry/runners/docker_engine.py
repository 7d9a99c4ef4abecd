"""The Docker runner's connection to its engine, and the engine calls it makes.

Owns the one client (made on first use, after probing the engine so that an
unreachable socket leaks nothing), the translation of connection trouble into
``RunnerUnavailableError`` (the job stays queued, the wait retries), and each
container operation the runner needs: create and start, inspect, list by label,
wait, read memory stats, stop, remove, and make sure an image is present. It knows
nothing of jobs, specs or handles: ``runners.docker`` decides what to do and when,
``runners.docker_spec`` says what a job's container looks like.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import requests

from jobferry.errors import RunnerError, RunnerUnavailableError, SubmitError
from jobferry.runners.base import USABLE_TIMEOUT_S

logger = logging.getLogger(__name__)

_RUNNING_STATES = frozenset({"created", "running", "paused", "restarting"})
#: Memory samples: the first at once, then after 0.25 s, doubling up to every 5 s.
SAMPLE_FIRST_S = 0.25
SAMPLE_MAX_S = 5.0


class DockerEngine:
    """One Docker engine, reached at *base_url* with *timeout_s* per API call.

    Thread-safe: the client is made once under a lock, and the SDK's connection
    pool (``max_pool_size``) serves the runner's threads.
    """

    def __init__(self, base_url: str, timeout_s: float, max_pool_size: int) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_pool_size = max_pool_size
        self._client_obj: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
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
                max_pool_size=self.max_pool_size,
            )
            return self._client_obj

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[Any]:
        """Yield the low-level API client; connection trouble becomes RunnerUnavailableError."""
        api = self.client().api
        try:
            yield api
        except docker.errors.APIError:  # an HTTPError too, but the engine did answer
            raise
        except requests.RequestException as exc:
            raise RunnerUnavailableError(
                f"docker engine at {self.base_url} failed to {what}: {exc}"
            ) from exc

    def ping(self, timeout_s: float = USABLE_TIMEOUT_S) -> str | None:
        """None when the engine answers ``/_ping`` within *timeout_s*, else why not.
        Blocking; never raises."""
        try:
            api = self.client().api
            response = api.get(f"{api.base_url}/_ping", timeout=min(timeout_s, self.timeout_s))
        except RunnerUnavailableError as exc:
            return f"engine not answering: {exc.message}"
        except (requests.RequestException, docker.errors.DockerException) as exc:
            return f"engine not answering: {self.base_url}: {exc}"
        if response.status_code != 200:
            return f"engine not answering: {self.base_url}: /_ping said {response.status_code}"
        return None

    def close(self) -> None:
        """Close the client (a later call makes a new one)."""
        with self._lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()

    # --- containers ---------------------------------------------------------------

    def run(self, image: str, name: str, create: dict[str, Any]) -> tuple[str, float]:
        """Create container *name* from *image* with the SDK's *create* arguments and
        start it; return its id and the time it was started. A container that does
        not start is removed again.

        Raises:
            SubmitError: the image is missing or the engine refuses the container.
            RunnerUnavailableError: the engine does not answer.
        """
        client = self.client()
        try:
            with self.call("create a container"):
                container = client.containers.create(image, name=name, **create)
        except docker.errors.ImageNotFound as exc:
            raise SubmitError(f"image {image} is not available locally") from exc
        except docker.errors.APIError as exc:
            raise SubmitError(f"cannot create container {name}: {explain(exc)}") from exc
        started_at = time.time()
        try:
            with self.call("start a container"):
                container.start()
        except (docker.errors.APIError, RunnerUnavailableError) as exc:
            with contextlib.suppress(docker.errors.APIError, requests.RequestException):
                container.remove(force=True)
            if isinstance(exc, RunnerUnavailableError):
                raise
            raise SubmitError(f"cannot start container {name}: {explain(exc)}") from exc
        return str(container.id), started_at

    def inspect(self, ref: str) -> dict[str, Any] | None:
        """The container's inspect data; None if it does not exist."""
        with self.call("inspect a container") as api:
            try:
                return dict(api.inspect_container(ref))
            except docker.errors.NotFound:
                return None
            except docker.errors.APIError as exc:
                raise RunnerError(f"cannot inspect container {ref}: {explain(exc)}") from exc

    def listed(self, labels: list[str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all *labels* (``key=value``)."""
        with self.call("list containers") as api:
            return list(api.containers(all=True, filters={"label": labels}))

    def wait(self, ref: str, timeout: float) -> bool:
        """Block until the container ends, up to *timeout*; True once it has ended
        (or is gone), False on a read timeout.

        Raises:
            RunnerUnavailableError: the engine does not answer (other than timing out).
            RunnerError: the engine refused.
        """
        try:
            with self.call("wait for a container") as api:
                api.wait(ref, timeout=max(0.01, timeout))
            return True
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            raise RunnerError(explain(exc)) from exc
        except RunnerUnavailableError as exc:
            # A read timeout looks just like an engine that went away: tell them apart.
            if "timed out" in str(exc):
                return False
            raise

    def memory_bytes(self, ref: str) -> int | None:
        """The container's memory high-water mark from the engine's stats (cgroup v1
        ``max_usage``; cgroup v2 only has the current ``usage``); None if unknown."""
        with self.call("read container stats") as api:
            try:
                stats = api.stats(ref, stream=False, one_shot=True)
            except docker.errors.APIError:
                return None
        memory = (stats or {}).get("memory_stats") or {}
        value = max(int(memory.get("max_usage") or 0), int(memory.get("usage") or 0))
        return value or None

    def follow_memory(self, ref: str, stop: threading.Event, note: Callable[[int], None]) -> None:
        """Hand each ``memory_bytes`` sample of the container to *note* until *stop*.

        Blocking: run it in a thread of its own (a stats call can take a second, and
        must never delay noticing the end of the container). An engine that does
        not answer is asked again at the next sample.
        """
        delay = SAMPLE_FIRST_S
        while not stop.is_set():
            try:
                value = self.memory_bytes(ref)
            except RunnerUnavailableError:
                value = None
            if value is not None:
                note(value)
            stop.wait(delay)
            delay = min(delay * 2, SAMPLE_MAX_S)

    def stop(self, ref: str, user: str, grace_s: float, what: str) -> None:
        """SIGTERM every process of the container but its PID 1, SIGKILL it all after
        *grace_s*, and wait until it has ended. *what* names it in log lines."""
        with self.call("stop a container") as api:
            # The wrapper is PID 1 and ignores SIGTERM until the job ends, so signal
            # every other process of the container from inside, as the job's user.
            try:
                exec_id = api.exec_create(ref, ["/bin/sh", "-c", "kill -TERM -1"], user=user)
                api.exec_start(exec_id)
            except docker.errors.APIError as exc:  # not running any more, or no /bin/sh
                logger.debug("%s: SIGTERM failed: %s", what, explain(exc))
            try:
                api.wait(ref, timeout=max(0.01, grace_s))
            except docker.errors.APIError:  # gone already
                pass
            except requests.RequestException:  # still running after the grace time
                with contextlib.suppress(docker.errors.APIError):
                    api.kill(ref)
                with contextlib.suppress(docker.errors.APIError):
                    api.wait(ref, timeout=math.ceil(self.timeout_s))

    def remove(self, ref: str) -> None:
        """Remove the container, running or not. Idempotent."""
        with self.call("remove a container") as api:
            try:
                api.remove_container(ref, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # removal already in progress
                    raise RunnerError(f"cannot remove container {ref}: {explain(exc)}") from exc

    def ensure_image(self, image: str, pull: bool) -> None:
        """Make sure *image* is present, pulling it if *pull* allows.

        Raises:
            SubmitError: it is missing and may not (or cannot) be pulled.
        """
        client = self.client()
        with self.call("look up an image"):
            try:
                client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:
                raise SubmitError(f"cannot look up image {image}: {explain(exc)}") from exc
        if not pull:
            raise SubmitError(
                f"image {image} is not available locally and pulling is disabled"
                " (runners.docker.pull)"
            )
        logger.info("pulling image %s", image)
        with self.call("pull an image"):
            try:
                client.images.pull(image)
            except docker.errors.APIError as exc:
                raise SubmitError(f"cannot pull image {image}: {explain(exc)}") from exc


def running(attrs: dict[str, Any]) -> bool:
    """Whether inspect data says the container has not ended yet."""
    state = attrs.get("State") or {}
    return bool(state.get("Running")) or state.get("Status") in _RUNNING_STATES


def epoch(text: str | None) -> float | None:
    """An engine timestamp (RFC 3339, nanoseconds) as epoch seconds; None if unset."""
    if not text or text.startswith("0001-01-01"):
        return None
    # Python's fromisoformat takes at most microseconds: cut the fraction to 6 digits.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def explain(exc: Exception) -> str:
    """The engine's own words for an API error."""
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)
