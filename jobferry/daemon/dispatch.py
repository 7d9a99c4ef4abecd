"""Starting a submission's job at once, in the submitting thread, when nothing waits.

On an idle node a new job would be queued, the scheduler woken, the job
claimed in a second transaction and spawned after two more hops between the
event loop and the worker threads: a few milliseconds on every job's way from
submission to running. When the scheduler has a free slot that fits the job and
no queued job could be waiting for it (no backlog, see ``Scheduler.run``), the
claim is a foregone conclusion; then the submission stores the job already
claimed by this node (state ``running``, attempt 1) in its own insert and
spawns it right away, and the scheduler takes it over from there (storing the
handle, following it to its end) exactly as if it had claimed it.

The scheduler publishes an *opening* (on the event loop) after each claim
round and whenever a slot frees: per runner the free slots, and the node's free
cores, memory and GPUs, for destinations whose runner starts jobs quickly
(``Runner.quick_submit``), that share this node's disk and have no
``max_concurrent``. A submission ``reserve``\\ s from it under a lock (from any
thread); the reservation counts as used in the scheduler's own sums until the
scheduler takes the started job over, so a claim round can never hand the same
slot out twice. While a round runs, or anything may wait, there is no opening:
submissions queue as usual and keep their order.

If the daemon dies after the insert and before the spawn, the next start finds
the job claimed without a handle and no trace of a process, and queues it
again; one that dies after the spawn is found by its wrapper's pid file. Either
way the job runs once.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobferry.runners.base import RunHandle
from jobferry.services.execution import ClaimedJob
from jobferry.store.models import Job

if TYPE_CHECKING:
    from jobferry.daemon.scheduler import Scheduler


@dataclass(frozen=True)
class Start:
    """A claimed job; spawned already (``handle`` or ``error`` set) when its runner
    has ``quick_submit`` (by the claim's own call, or by a direct start)."""

    claimed: ClaimedJob
    handle: RunHandle | None = None
    error: Exception | None = None

    @property
    def spawned(self) -> bool:
        return self.handle is not None or self.error is not None


@dataclass(eq=False)
class Reservation:
    """A slot (and the resources) a submission took from the opening."""

    runner: str
    destination: str
    cores: int
    memory_mb: int
    gpus: int


@dataclass
class Opening:
    """What a submission may take without a claim round (see the module's docstring)."""

    #: destination -> its runner, for the destinations that may start directly.
    destinations: dict[str, str]
    #: runner -> free slots.
    slots: dict[str, int]
    cores: int
    memory_mb: int
    gpus: int


class DirectStart:
    """The scheduler's side door for submissions (``Core.dispatcher``).

    ``publish`` and ``reserved`` run on the event loop; ``reserve``, ``release``
    and ``start`` in the submitting worker thread.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._opening: Opening | None = None
        self._reserved: list[Reservation] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- on the event loop -----------------------------------------------------------

    def publish(self, opening: Opening | None) -> None:
        """Offer *opening* to submissions (None: submissions queue)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        with self._lock:
            self._opening = opening

    def reserved(self) -> list[Reservation]:
        """Reservations whose jobs the scheduler has not taken over yet."""
        with self._lock:
            return list(self._reserved)

    def _take_over(self, reservation: Reservation, start: Start | None) -> None:
        with self._lock:
            self._reserved.remove(reservation)
        self._scheduler.take_over(start)

    # --- in the submitting thread ----------------------------------------------------

    def reserve(
        self, destination: str, cores: int, memory_mb: int | None, gpus: int
    ) -> Reservation | None:
        """Take a slot for a job of *destination* if one is open, else None (queue it)."""
        memory = memory_mb or 0
        with self._lock:
            opening = self._opening
            if opening is None or self._loop is None or self._scheduler.drained:
                return None
            runner = opening.destinations.get(destination)
            if runner is None or opening.slots.get(runner, 0) < 1:
                return None
            if cores > opening.cores or memory > opening.memory_mb or gpus > opening.gpus:
                return None
            opening.slots[runner] -= 1
            opening.cores -= cores
            opening.memory_mb -= memory
            opening.gpus -= gpus
            reservation = Reservation(runner, destination, cores, memory, gpus)
            self._reserved.append(reservation)
            return reservation

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose job was not stored (the submission failed)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._take_over, reservation, None)

    def start(self, reservation: Reservation, job: Job) -> None:
        """Spawn *job* (stored as claimed by this node) and hand it to the scheduler.

        A spawn that fails is handed over too: the scheduler ends the job with the
        reason, as for any job that could not start.
        """
        assert self._loop is not None
        scheduler = self._scheduler
        spec = scheduler.execution.spec(job)
        claimed = ClaimedJob(
            job.id, job.attempt, job.runner, spec, node=scheduler.core.node_name, more=False
        )
        try:
            start = Start(claimed, handle=scheduler.runners[job.runner].submit(spec))
        except Exception as exc:  # handled on the loop, like any failed start
            start = Start(claimed, error=exc)
        self._loop.call_soon_threadsafe(self._take_over, reservation, start)
