"""Progress bars for uploads and downloads (rich), only where a person watches.

A bar is drawn on stderr, so stdout stays the command's result, and only when
stdout and stderr are both terminals and ``--quiet`` was not given: a pipe, a
file or a CI log gets no escape codes.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import TaskID


class Meter(Protocol):
    """What a transfer reports to: bytes moved, out of a known total."""

    def start(self, label: str, total: int, done: int = 0) -> None: ...
    def advance(self, count: int) -> None: ...
    def finish(self) -> None: ...


class Silent:
    def start(self, label: str, total: int, done: int = 0) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Bar:
    """One rich progress bar at a time, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self._task: TaskID | None = None

    def start(self, label: str, total: int, done: int = 0) -> None:
        self.finish()
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, completed=done)

    def advance(self, count: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.refresh()
            self._progress.stop()
            self._progress.remove_task(self._task)
            self._task = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish()


def meter(quiet: bool) -> Meter:
    """A bar when a person watches this command, otherwise nothing."""
    if quiet or not (sys.stdout.isatty() and sys.stderr.isatty()):
        return Silent()
    return Bar()
