"""Starting a submission's job at once, in the submitting thread, when nothing waits.

On an idle node a new job would be queued, the scheduler woken, the job
claimed in a second transaction and spawned after two more hops between the
event loop and the worker threads: a few milliseconds on every job's way from
submission to running. When the scheduler has a free slot that fits the job and
no queued job could be waiting for it (no backlog, see ``Scheduler.run``), the
claim is a foregone conclusion; then the submission stores the job already
claimed by this node (state ``running``, attempt 1) in its own insert and
spawns it right away and stores its handle (still in the submitting thread), and
the scheduler takes it over from there (following it to its end) exactly as if it
had claimed it.

The scheduler publishes an *offer* (``SlotOffer``, on the event loop) after each
claim round and whenever a slot frees: per runner the free slots, and the node's
free cores, memory and GPUs, for destinations whose runner starts jobs quickly
(``Runner.quick_submit``), that share this node's disk and have no
``max_concurrent``. A submission ``reserve``\\ s from it under a lock (from any
thread); the reservation counts as used in the scheduler's own sums until the
scheduler takes the started job over, so a claim round can never hand the same
slot out twice. While a round runs, or anything may wait, there is no offer:
submissions queue as usual (``queued`` wakes the scheduler) and keep their order.

``DirectStart`` is the daemon's side of ``services.ports.Dispatcher``: the job
service is given it through its constructor and knows nothing of the daemon.
Nor does ``DirectStart`` know the scheduler: the scheduler builds it with what
it needs (the runners, how to build a job's spec, and callbacks to take a
started job over, to ask whether the node is drained and to wake up), so this
module imports nothing of ``daemon.scheduler``.

If the daemon dies after the insert and before the spawn, the next start finds
the job claimed without a handle and no trace of a process, and queues it
again; one that dies after the spawn is found by its wrapper's pid file. Either
way the job runs once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from jobferry.config import Config
from jobferry.daemon.logcontext import job_scope
from jobferry.runners.base import RunHandle, Runner, RunSpec
from jobferry.services.execution import ClaimedJob
from jobferry.store.models import Job


def direct_destinations(
    config: Config, runners: Mapping[str, Runner], paused: Container[str]
) -> dict[str, str]:
    """destination -> its runner, for the destinations whose jobs a submission may start
    itself: a runner that starts jobs quickly and is not *paused*, shared disk, no
    ``max_concurrent`` (counting it would take the store)."""
    destinations: dict[str, str] = {}
    for name, dest in config.destinations.items():
        runner = runners.get(dest.runner)
        if runner is None or not runner.quick_submit or dest.runner in paused:
            continue
        if dest.staging == "shared" and not dest.max_concurrent:
            destinations[name] = dest.runner
    return destinations


@dataclass(frozen=True)
class StartingJob:
    """A claimed job on its way to running; spawned already (``handle`` or ``error``
    set) when its runner has ``quick_submit`` (by the claim's own call, or by a
    direct start), and then its handle is stored too, in the same call: ``state`` is
    the job's state as that store found it (``daemon.claims.Claims.record``)."""

    claimed: ClaimedJob
    handle: RunHandle | None = None
    error: Exception | None = None
    state: str | None = None

    @property
    def spawned(self) -> bool:
        return self.handle is not None or self.error is not None


@dataclass(eq=False)
class Reservation:
    """A slot (and the resources) a submission took from the offer."""

    runner: str
    destination: str
    cores: int
    memory_mb: int
    gpus: int


@dataclass
class SlotOffer:
    """What a submission may take without a claim round (see the module's docstring)."""

    #: destination -> its runner, for the destinations that may start directly.
    destinations: dict[str, str]
    #: runner -> free slots.
    slots: dict[str, int]
    cores: int
    memory_mb: int
    gpus: int


class DirectStart:
    """The scheduler's side door for submissions (the daemon's
    ``services.ports.Dispatcher``): a submission takes a free slot and starts its
    job itself, or queues it and wakes the scheduler.

    ``publish`` and ``reserved`` run on the event loop; ``reserve``, ``release``,
    ``start`` and ``queued`` in the submitting worker thread (``queued`` in any
    thread).
    """

    def __init__(
        self,
        *,
        runners: Mapping[str, Runner],
        spec: Callable[[Job], RunSpec],
        node: str,
        record: Callable[[ClaimedJob, RunHandle], str],
        take_over: Callable[[StartingJob | None], None],
        drained: Callable[[], bool],
        wake: Callable[[], None],
    ) -> None:
        """*spec* builds a job's run spec (``ExecutionService.spec``); *record*
        (blocking, never raises) stores a started job's handle and returns the job's
        state; *take_over* (on the loop) follows a job a submission started (None: a
        reservation was given back); *drained* says whether the node claims nothing
        new; *wake* (on the loop) asks the scheduler for a claim round."""
        self._runners = runners
        self._spec = spec
        self._record = record
        self._node = node
        self._take_over_start = take_over
        self._drained = drained
        self._wake = wake
        self._lock = threading.Lock()
        self._offer: SlotOffer | None = None
        self._reserved: list[Reservation] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: A wake is on its way to the loop: a burst of submissions sends one.
        self._wake_pending = threading.Event()

    # --- on the event loop -----------------------------------------------------------

    def publish(self, offer: SlotOffer | None) -> None:
        """Offer *offer* to submissions (None: submissions queue)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        with self._lock:
            self._offer = offer

    def reserved(self) -> list[Reservation]:
        """Reservations whose jobs the scheduler has not taken over yet."""
        with self._lock:
            return list(self._reserved)

    def _take_over(self, reservation: Reservation, start: StartingJob | None) -> None:
        with self._lock:
            self._reserved.remove(reservation)
        self._take_over_start(start)

    def _woken(self) -> None:
        self._wake_pending.clear()
        self._wake()

    # --- in the submitting thread ----------------------------------------------------

    def queued(self) -> None:
        """A job was queued (here, or elsewhere: PostgreSQL NOTIFY): wake the scheduler.

        Before the scheduler's first round (no loop known yet) there is nothing to
        wake: that round, which begins by publishing, claims the job. A wake rouses
        no round that could claim nothing (no free slot): the backlog it sets makes a
        freed slot rouse one, and a paused runner's round comes when its pause ends."""
        loop = self._loop
        if loop is not None and not self._wake_pending.is_set():
            self._wake_pending.set()
            if asyncio.events._get_running_loop() is loop:
                loop.call_soon(self._woken)  # on the loop (a batched submission): no pipe
            else:
                loop.call_soon_threadsafe(self._woken)

    def reserve(
        self, destination: str, cores: int, memory_mb: int | None, gpus: int
    ) -> Reservation | None:
        """Take a slot for a job of *destination* if one is offered, else None (queue it)."""
        memory = memory_mb or 0
        with self._lock:
            offer = self._offer
            if offer is None or self._loop is None or self._drained():
                return None
            runner = offer.destinations.get(destination)
            if runner is None or offer.slots.get(runner, 0) < 1:
                return None
            if cores > offer.cores or memory > offer.memory_mb or gpus > offer.gpus:
                return None
            offer.slots[runner] -= 1
            offer.cores -= cores
            offer.memory_mb -= memory
            offer.gpus -= gpus
            reservation = Reservation(runner, destination, cores, memory, gpus)
            self._reserved.append(reservation)
            return reservation

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose job was not stored (the submission failed)
        or was stored queued (the node was drained meanwhile)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._take_over, reservation, None)

    def start(self, reservation: Reservation, job: Job) -> None:
        """Spawn *job* (stored as claimed by this node), store its handle and hand it
        to the scheduler (one thread, no hop through the event loop in between).

        A spawn that fails is handed over too: the scheduler ends the job with the
        reason, as for any job that could not start.
        """
        assert self._loop is not None
        spec = self._spec(job)
        claimed = ClaimedJob(job.id, job.attempt, job.runner, spec, node=self._node)
        with job_scope(claimed, self._node):  # the runner's lines are about the job
            try:
                handle = self._runners[job.runner].submit(spec)
            except Exception as exc:  # handled on the loop, like any failed start
                start = StartingJob(claimed, error=exc)
            else:
                start = StartingJob(claimed, handle, state=self._record(claimed, handle))
        self._loop.call_soon_threadsafe(self._take_over, reservation, start)
