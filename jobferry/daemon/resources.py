"""What the jobs a node follows hold, and what the node has left for new ones.

Each job the scheduler follows, and each job a submission reserved to start itself
(``daemon.dispatch``), holds a slot of its runner; local and Docker jobs
(``NODE_RUNNERS``) also hold the node's cores, memory and GPUs, Slurm jobs none
of them. The scheduler keeps one ``HeldResources`` per job and asks ``node_fit``
what a claim must fit in; the heartbeat publishes the same figures
(``Scheduler.usage``). All of it is in memory: counting costs no store round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jobferry.runners.base import Capacity
from jobferry.store import transitions

#: Runners whose jobs use this node's cores, memory and GPUs.
NODE_RUNNERS = frozenset({"local", "docker"})


@dataclass(frozen=True)
class HeldResources:
    """What one job this node follows (or a submission's reservation) holds: a slot of
    its runner and, for ``NODE_RUNNERS``, the node's cores, memory and GPUs."""

    runner: str
    destination: str
    cores: int
    memory_mb: int
    gpus: int


def node_fit(capacity: Capacity, held: Iterable[HeldResources]) -> transitions.NodeResources:
    """What a claim of a local or Docker job must fit in, given what *held* holds."""
    used = [h for h in held if h.runner in NODE_RUNNERS]
    cores, memory, gpus = capacity.cores or 1, capacity.memory_mb or 0, capacity.gpus or 0
    return transitions.NodeResources(
        total_cores=cores,
        total_memory_mb=memory,
        total_gpus=gpus,
        free_cores=cores - sum(h.cores for h in used),
        free_memory_mb=memory - sum(h.memory_mb for h in used),
        free_gpus=gpus - sum(h.gpus for h in used),
    )
