"""What services need from the process that runs them, as narrow protocols.

A submission may start its job at once or must wake whoever claims queued
jobs; a wrapper's callback that ended a job must tell whoever waits on that
job's runner. Both are the daemon's business (``jobferry.daemon.dispatch``,
``jobferry.daemon.scheduler``), but services must not know the daemon exists:
they are given these small interfaces through their constructors
(``services.container.build``), and the daemon passes its implementations. The
CLI and tests, which run no scheduler, get the do-nothing ones below: every
submission is queued, and nothing is told. ``JobEnded`` goes the other way: what
a face adds to a job's end or an attempt's requeue, which the composition roots give
``ExecutionService`` and ``NodeService``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from jobferry.runners.base import RunSpec
from jobferry.store.models import Job, JobState

#: What a dispatcher hands out for a free slot (opaque to services).
R = TypeVar("R")


class Dispatcher(Protocol[R]):
    """Where submissions go: started at once in a free slot, or queued.

    ``reserve``, ``release``, ``start`` and ``queued`` are called in the
    submitting worker thread.
    """

    def reserve(self, destination: str, cores: int, memory_mb: int | None, gpus: int) -> R | None:
        """A free slot for a job of *destination* (None: queue the job)."""
        ...

    def release(self, reservation: R) -> None:
        """Give back a reservation whose job was not stored, or was stored queued."""
        ...

    def start(self, reservation: R, job: Job) -> None:
        """Start *job*, stored as claimed by this node, in its reserved slot."""
        ...

    def queued(self) -> None:
        """A job was queued: wake whoever claims jobs."""
        ...


class JobEvents(Protocol):
    """What a job's wrapper told the service, for whoever follows the job's runner."""

    def job_callback(self, job_id: str) -> None:
        """A wrapper's callback ended *job_id* in the store (called on the event loop):
        stop waiting on its runner."""
        ...


class EndedAttempt(Protocol):
    """What ``JobEnded`` is told of the attempt that ended (``execution.ClaimedJob``)."""

    @property
    def job_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def spec(self) -> RunSpec: ...


class JobEnded(Protocol):
    """What else the end of a job's attempt records, in the transaction that records it
    (a face's own lasting record of the job: ``services.tes_end`` keeps a TES task's
    final state and logs, and why an attempt was requeued). Called by
    ``ExecutionService`` for every end it records (``__call__``) and by every requeue
    (``requeued``: ``services.endings.requeue``), in a worker thread: it must
    be cheap for the jobs it has nothing to do with."""

    def __call__(
        self,
        session: Session | Connection,
        claimed: EndedAttempt,
        state: JobState,
        exit_code: int | None,
    ) -> None: ...

    def requeued(
        self, session: Session, job_id: str, attempt: int, argv: Sequence[Any], why: Requeue
    ) -> None:
        """Attempt *attempt* of *job_id* (whose argv is *argv*: a cheap test of whether
        it is the face's at all) was put back in the queue, for *why*."""
        ...


@dataclass(frozen=True)
class Requeue:
    """Why an attempt was requeued: the reason stored with the job, and the node it ran on."""

    reason: str
    node: str | None


class NoDispatch:
    """No scheduler in this process: every submission is queued (the CLI, tests)."""

    def reserve(
        self, destination: str, cores: int, memory_mb: int | None, gpus: int
    ) -> object | None:
        return None

    def release(self, reservation: object) -> None:
        pass

    def start(self, reservation: object, job: Job) -> None:
        raise AssertionError("NoDispatch never reserves a slot")

    def queued(self) -> None:
        pass


class NoJobEvents:
    """No runner followed in this process: nobody to tell."""

    def job_callback(self, job_id: str) -> None:
        pass


class NoJobEnded:
    """Nothing else to record (an ``ExecutionService`` or ``NodeService`` nobody gave a
    ``JobEnded``)."""

    def __call__(
        self,
        session: Session | Connection,
        claimed: EndedAttempt,
        state: JobState,
        exit_code: int | None,
    ) -> None:
        pass

    def requeued(
        self, session: Session, job_id: str, attempt: int, argv: Sequence[Any], why: Requeue
    ) -> None:
        pass


#: The defaults ``services.container.build`` uses without a daemon.
NO_DISPATCH: Dispatcher[Any] = NoDispatch()
NO_JOB_EVENTS: JobEvents = NoJobEvents()
#: Lower case: the name ``ExecutionService``'s default has always had.
no_job_ended: JobEnded = NoJobEnded()
