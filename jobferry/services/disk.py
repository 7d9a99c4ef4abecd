"""The disk guard: below ``storage.min_free_mb`` or ``storage.min_free_percent`` free on
the data directory's filesystem, new work is refused with 507 (InsufficientStorageError).

What it refuses: new submissions (``JobService.submit``, every face), script uploads
and Wooey submissions before a byte of their body is read (the Wooey form handlers'
``prepare``), and job_files uploads into jobs that have not started yet (Pulsar-style
input staging, ``JobFilesService.begin_upload``). What it lets through, so that
running jobs continue: their wrappers' callbacks and the outputs, logs and results
that jobs post while running or within ``jobs.files_grace_s`` of their end (remote
staging). One reading of the free space (psutil) is reused for
``storage.check_interval_s``, so the guard clears by itself once space returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from jobferry.errors import InsufficientStorageError
from jobferry.services.core import Core

MIB = 1 << 20


@dataclass(frozen=True)
class DiskReading:
    """Free space on the data directory's filesystem, and what the configuration requires."""

    path: str
    free_mb: float
    free_percent: float
    required_mb: int
    required_percent: float

    @property
    def low(self) -> bool:
        return self.free_mb < self.required_mb or self.free_percent < self.required_percent

    def details(self) -> dict[str, object]:
        return {
            "free_mb": round(self.free_mb, 1),
            "required_mb": self.required_mb,
            "free_percent": round(self.free_percent, 2),
            "required_percent": self.required_percent,
        }

    def describe(self) -> str:
        return (
            f"{self.free_mb:.1f} MiB ({self.free_percent:.2f} %) free for the data directory; "
            f"at least {self.required_mb} MiB and {self.required_percent:g} % are required "
            "(storage.min_free_mb, storage.min_free_percent)"
        )


class DiskGuard:
    """Reads and judges the free space of the data directory's filesystem (thread-safe)."""

    def __init__(self, core: Core, clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self._clock = clock
        self._lock = threading.Lock()
        self._reading: DiskReading | None = None
        self._until = 0.0

    def reading(self) -> DiskReading:
        """The current reading (one ``statvfs`` per ``storage.check_interval_s``)."""
        now = self._clock()
        with self._lock:
            if self._reading is not None and now < self._until:
                return self._reading
        storage = self.core.config.storage
        path = str(self.core.data_path)
        usage = psutil.disk_usage(path)
        reading = DiskReading(
            path=path,
            free_mb=usage.free / MIB,
            free_percent=100.0 * usage.free / usage.total if usage.total else 0.0,
            required_mb=storage.min_free_mb,
            required_percent=storage.min_free_percent,
        )
        with self._lock:
            self._reading, self._until = reading, now + storage.check_interval_s
        return reading

    def require(self, what: str) -> None:
        """Raise InsufficientStorageError (507) if the free space is below a threshold.

        *what* names what is refused (``new submissions``, ``uploads``)."""
        reading = self.reading()
        if reading.low:
            raise InsufficientStorageError(
                f"Not enough free disk space for {what}: {reading.describe()}.",
                **reading.details(),
            )

    def check(self) -> str:
        """For readiness: ``ok``, or what is wrong."""
        reading = self.reading()
        return f"low on disk space: {reading.describe()}" if reading.low else "ok"
