"""Runners whose claims are paused: they reported themselves unavailable.

A runner that raises ``RunnerUnavailableError`` on a start (its engine or
controller is down) must not have every queued job of its destinations claimed,
refused and requeued again at once: the scheduler stops claiming for it for a
while, doubling the pause up to ``MAX_PAUSE_S`` while the outage lasts, and logs
the outage once (and once more when the runner is back). Kept apart from the
scheduler, which only asks whether a runner is paused and until when.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("jobferry.daemon.scheduler")  # the lines the scheduler always logged

#: Longest pause of a runner's claims after it reported itself unavailable, seconds.
MAX_PAUSE_S = 30.0


class Pauses:
    """Per runner: the loop time before which it gets no claims, and its back-off."""

    def __init__(self) -> None:
        self._paused: dict[str, tuple[float, float]] = {}

    def __contains__(self, runner: object) -> bool:
        return runner in self._paused

    def until(self, runner: str) -> float:
        """The loop time before which *runner* gets no claims (0: not paused)."""
        return self._paused.get(runner, (0.0, 0.0))[0]

    def ends(self) -> list[float]:
        """When each pause ends (loop time): a round is due then."""
        return [until for until, _ in self._paused.values()]

    def pause(self, runner: str, now: float, message: str) -> None:
        """Back off claims for *runner* (unavailable); log once per outage."""
        _, backoff = self._paused.get(runner, (0.0, 0.0))
        if not backoff:
            logger.error("runner %s is unavailable; its jobs stay queued: %s", runner, message)
        backoff = min(MAX_PAUSE_S, backoff * 2 if backoff else 1.0)
        self._paused[runner] = (now + backoff, backoff)

    def resume(self, runner: str) -> None:
        """*runner* started a job: it is available again."""
        if self._paused.pop(runner, None) is not None:
            logger.warning("runner %s is available again", runner)
