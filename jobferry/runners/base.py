"""The Runner interface: data in, data out, no database and no HTTP.

A runner starts a job's command somewhere (a local process, a container, a
cluster job), reports how it ends, stops it on request and re-attaches to it
after a daemon restart. The scheduler decides what runs and when; runners never
count resources or choose jobs.

Methods are plain blocking calls, except ``wait`` (and ``wait_ended``) which are
coroutines; the daemon calls the blocking ones through its executor, never on the
event loop.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from jobferry.errors import RunnerError


class RunState(enum.StrEnum):
    """What a runner knows about a started job."""

    RUNNING = "running"
    #: The command ended by itself; ``exit_code`` says how.
    EXITED = "exited"
    #: The runner ended it (cancel or walltime); ``reason`` says why.
    KILLED = "killed"
    #: It is gone and nothing says how it ended.
    LOST = "lost"


@dataclass(frozen=True)
class Capacity:
    """The most one job can get from a runner somewhere (None: not known)."""

    cores: int | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    where: str = "this node"


@dataclass(frozen=True)
class RunSpec:
    """Everything a runner needs to start one job.

    ``argv`` is executed as a list, never through a shell. ``workdir`` is the
    job's working directory (its outputs are what it writes there); stdout and
    stderr go to ``stdout_path``/``stderr_path``; ``result_path`` is where the job
    wrapper records the exit code when it ends.
    """

    job_id: str
    argv: tuple[str, ...]
    workdir: str
    stdout_path: str
    stderr_path: str
    result_path: str
    env: dict[str, str] = field(default_factory=dict)
    walltime_s: float | None = None
    cores: int = 1
    memory_mb: int | None = None
    #: The claim's attempt number (callbacks and writes are fenced by it).
    attempt: int = 1
    #: The destination's name and parameters (config ``destinations.<name>``).
    destination: str = "local"
    gpus: int = 0
    image: str | None = None
    network: bool = False
    partition: str | None = None
    sbatch_args: tuple[str, ...] = ()
    #: ``shared``: the execution host sees ``workdir`` and the other paths above.
    #: ``remote``: it does not; the wrapper works in ``remote_dir`` on the execution
    #: host, fetches ``stage_in`` (paths relative to ``job_dir``) over HTTP first and
    #: posts outputs, logs and the result back to ``job_dir`` over HTTP.
    staging: str = "shared"
    job_dir: str = ""
    remote_dir: str | None = None
    stage_in: tuple[str, ...] = ()
    #: Cap of stdout and of stderr, bytes (``jobs.max_log_mb``; 0: none): the wrapper
    #: keeps the head and the tail of a longer log with a marker between them.
    max_log_bytes: int = 0


@dataclass(frozen=True)
class RunHandle:
    """How to find a started job again, even from another daemon process.

    ``external_id`` is the runner's own id (``"<pid>@<start time>"`` for local
    processes, a container id, a Slurm job id); ``data`` holds whatever else the
    runner needs to re-attach. Handles round-trip through JSON (``dumps``/``loads``).

    ``data`` is the stored form of the runner's typed payload (a ``HandlePayload``
    subclass each runner declares): the daemon and the services carry it without
    looking inside, and runners never index it by key either. A runner makes its
    handles with ``RunHandle.of`` and reads them back with ``<Payload>.of(handle)``.
    The stored form is a flat JSON object of the payload's fields, so handles stored
    by earlier versions (which wrote the same keys by hand) still load.
    """

    runner: str
    external_id: str
    started_at: float
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, runner: str, external_id: str, started_at: float, payload: HandlePayload
    ) -> RunHandle:
        """A handle carrying *payload* (stored as a flat JSON object of its fields)."""
        return cls(runner, external_id, started_at, payload.encode())

    def dumps(self) -> str:
        # The same JSON as ``asdict(self)`` gave, without its recursive deep copy (the
        # payload is flat: ``HandlePayload.encode``); this runs for every job started.
        raw = {
            "data": self.data,
            "external_id": self.external_id,
            "runner": self.runner,
            "started_at": self.started_at,
        }
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> RunHandle:
        raw = json.loads(text)
        return cls(
            runner=str(raw["runner"]),
            external_id=str(raw["external_id"]),
            started_at=float(raw["started_at"]),
            data=dict(raw.get("data") or {}),
        )


class HandlePayload:
    """Base of a runner's typed handle payload: what it needs to find a job again.

    A subclass is a frozen dataclass whose fields are ``str``, ``int`` or ``float``,
    optionally ``| None``. ``encode`` stores every field under its own name;
    ``of`` decodes a handle's ``data`` back, with these rules, which keep handles
    stored by earlier versions loadable:

    - a key that is missing or null takes the field's default; a field without a
      default is required (an optional field must have one);
    - values are converted with the field's type (``int("12")``, ``float(3)``),
      as the hand-written decoders of earlier versions did;
    - keys the payload does not declare are ignored (older or newer writers).

    A required key that is missing, or a value that does not convert, raises
    ``RunnerError("malformed <runner> run handle ...")`` (``runner`` names it).
    """

    #: The runner whose handles carry this payload (named in decoding errors).
    runner: ClassVar[str] = "base"
    #: Set by ``@dataclass`` on each subclass (declared for the type checker).
    __dataclass_fields__: ClassVar[dict[str, Any]]

    @classmethod
    def of(cls, handle: RunHandle) -> Self:
        """Decode *handle*'s payload. Cheap (one pass over the fields).

        Raises:
            RunnerError: a required field is missing or a value does not convert.
        """
        kwargs: dict[str, Any] = {}
        data = handle.data
        fields = _fields_of(cls)
        try:
            for name, convert, required in fields:
                raw = data.get(name)
                if raw is not None:
                    kwargs[name] = raw if type(raw) is convert else convert(raw)
                elif required:
                    raise KeyError(name)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunnerError(f"malformed {cls.runner} run handle {handle.external_id!r}") from exc
        return cls(**kwargs)

    def encode(self) -> dict[str, Any]:
        """The stored form: every field under its own name."""
        return dict(vars(self))  # a dataclass's instance attributes are its fields


#: How long a runner's ``check_usable`` may wait on an engine or controller, at most.
USABLE_TIMEOUT_S = 2.0

#: Per payload class: (field name, converter, required) for each field, built once.
_FIELDS: dict[type, tuple[tuple[str, Callable[[Any], Any], bool], ...]] = {}
_CONVERTIBLE = (str, int, float)


def _fields_of(cls: type[HandlePayload]) -> tuple[tuple[str, Callable[[Any], Any], bool], ...]:
    known = _FIELDS.get(cls)
    if known is not None:
        return known
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        optional = False
        if isinstance(kind, types.UnionType):
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            optional = len(args) < len(typing.get_args(kind))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: one type (or | None) only")
            kind = args[0]
        if kind not in _CONVERTIBLE:
            raise TypeError(f"{cls.__name__}.{f.name}: str, int or float only")
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        if optional and not has_default:
            raise TypeError(f"{cls.__name__}.{f.name}: an optional field needs a default")
        out.append((f.name, kind, not has_default))
    fields = tuple(out)
    _FIELDS[cls] = fields
    return fields


@dataclass(frozen=True)
class RunMetrics:
    """Resource use of a finished job; ``None`` where the runner cannot tell."""

    wall_s: float | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    peak_rss_kb: int | None = None


@dataclass(frozen=True)
class RunStatus:
    """A snapshot of a started job."""

    state: RunState
    exit_code: int | None = None
    reason: str | None = None
    finished_at: float | None = None
    metrics: RunMetrics = RunMetrics()
    #: Whether the job wrapper's result file says the disk was full when the job ended
    #: (what it wrote may be cut short), for a runner that read that file to conclude
    #: (the local runner): the end's collection need not read it again. None: not
    #: read here, the caller reads the result file itself.
    disk_full: bool | None = None

    @property
    def is_final(self) -> bool:
        return self.state is not RunState.RUNNING


class Runner(abc.ABC):
    """Starts, watches, stops and re-attaches to jobs of one kind.

    Each runner declares the payload its handles carry (a ``HandlePayload``
    subclass), makes its handles with ``RunHandle.of`` and reads every handle it is
    given with ``<Payload>.of``, also handles stored by an earlier daemon or an
    earlier version; a malformed handle raises ``RunnerError``.
    """

    #: The name jobs record as their runner (``local``, ``docker``, ``slurm``).
    name: str = "base"
    #: ``submit`` takes a millisecond or so (no engine or controller round trip): the
    #: scheduler then spawns in the claim's own executor call.
    quick_submit: bool = False

    @abc.abstractmethod
    def submit(self, spec: RunSpec) -> RunHandle:
        """Start the job and return its handle. Blocking; not idempotent.

        Raises SubmitError if it cannot be started, RunnerUnavailableError if the
        runner is down for now (the job should stay queued).
        """

    @abc.abstractmethod
    def poll(self, handle: RunHandle) -> RunStatus:
        """Return the job's current status. Blocking, idempotent, cheap."""

    @abc.abstractmethod
    def cancel(self, handle: RunHandle, reason: str = "cancelled") -> None:
        """Stop the job and everything it started. Blocking; idempotent.

        A later ``poll``/``wait`` reports ``KILLED`` with *reason*.
        """

    def stop_stale(self, handle: RunHandle) -> None:
        """Stop an attempt that another node has taken over (this node had been
        declared dead). Blocking; idempotent. Unlike ``cancel`` it must leave nothing
        in the job's directory that the newer attempt could mistake for its own. The
        default cancels."""
        self.cancel(handle, "taken over by another node")

    @abc.abstractmethod
    def check_usable(self) -> str | None:
        """Whether this runner could start a job now (readiness). Blocking, bounded
        in time (a few seconds at most: an engine ping, a controller ping), never
        raises: None when usable, else one line saying why not (e.g. ``engine not
        answering: ...``)."""

    def capacity(self) -> Capacity | None:
        """The largest job this runner could ever run, if it knows (Slurm: its
        partitions); None for runners limited by this node's own resources."""
        return None

    def find(self, spec: RunSpec) -> RunHandle | None:
        """Find a job started from *spec* whose handle was never stored. Blocking.

        Covers a daemon that died between starting a job and recording its
        handle. Returns None when the runner has no trace of it (it never
        started, so it may be queued again). The default finds nothing.
        """
        return None

    def adopt(self, handle: RunHandle, spec: RunSpec) -> None:  # noqa: B027
        """Re-attach to a job started by an earlier daemon. Blocking; idempotent.

        After this, ``wait`` works for the handle as if this process had started
        it. The default does nothing (``poll`` already works from the handle).
        """

    def leftovers(self) -> list[tuple[str, RunHandle]]:
        """(job id, handle) of what this runner still holds on this node (containers),
        so the daemon can clean up after jobs that ended while it was down. Blocking."""
        return []

    def cleanup(self, handle: RunHandle) -> None:  # noqa: B027
        """Release what the runner holds for a finished job. Idempotent."""

    async def wait(self, handle: RunHandle) -> RunStatus:
        """Wait until the job is final and return its status.

        The default polls with back-off through the default executor; runners
        that can be told of the end (pidfd, callbacks) override it.
        """
        loop = asyncio.get_running_loop()
        delay = 0.05
        while True:
            status = await loop.run_in_executor(None, self.poll, handle)
            if status.is_final:
                return status
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def wait_ended(self, handle: RunHandle) -> RunStatus | None:
        """``wait``, for a caller that polls in a worker thread anyway once the job has
        ended (the daemon: in the one call that records the end): it may return None
        instead of the final status, once the job has ended and ``poll`` says how. A
        runner whose final status costs a blocking call overrides it (one round trip
        between the event loop and the worker threads less per job). The default
        returns ``wait``'s status."""
        return await self.wait(handle)

    def close(self) -> None:  # noqa: B027
        """Release the runner's own resources at daemon shutdown (jobs keep running)."""
