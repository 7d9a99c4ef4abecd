"""Counting failures per key in a sliding window (password guessing, per user and address).

In memory only: a restart forgets the counts, which is acceptable for slowing
down guessing (an attacker gains at most one window per restart). The number of
keys is bounded, so a flood of made-up user names cannot grow it without limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from jobferry.errors import TooManyRequestsError


class FailureLimiter:
    """At most *limit* failures per key within *window_s*; then TooManyRequestsError."""

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def check(self, *keys: str) -> None:
        """Raise TooManyRequestsError (with the seconds to wait) if any key is at its limit."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if times is not None and len(times) >= self.limit:
                    # The oldest failure that must expire before another attempt is allowed.
                    oldest = times[len(times) - self.limit]
                    wait = max(wait, oldest + self.window_s - now)
        if wait > 0:
            raise TooManyRequestsError(
                "Too many failed attempts: try again later.", retry_after=max(1, math.ceil(wait))
            )

    def failed(self, *keys: str) -> None:
        """Count one failure against each key."""
        now = self._clock()
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if times is None:
                    times = self._failures[key] = deque(maxlen=self.limit)
                times.append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)  # the least recently failed key

    def forget(self, key: str) -> None:
        """Clear a key's failures (after a success)."""
        with self._lock:
            self._failures.pop(key, None)
