"""The disk guard's thresholds, its cached reading and its error (``services.disk``).

A real ``Core`` on a real data directory and psutil's real reading of its filesystem;
the thresholds are set above or below what that filesystem has free, and the guard's
clock is a counter the test moves, so the cache's expiry needs no sleeping.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobferry.config import parse_config
from jobferry.errors import InsufficientStorageError
from jobferry.services.core import Core
from jobferry.services.disk import MIB, DiskGuard, DiskReading
from tests.db import with_database

pytestmark = pytest.mark.engine_independent


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _core(tmp_path: Path, storage: dict[str, Any]) -> Core:
    data = tmp_path / "data"
    config = {"data_dir": str(data), "storage": storage}
    core = Core(parse_config(with_database(config, data)))
    core.ensure_dirs()
    return core


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[Core] = []

    def guard(clock: Clock | None = None, **storage: Any) -> DiskGuard:
        core = _core(tmp_path / str(len(made)), storage)
        made.append(core)
        return DiskGuard(core, clock or Clock())

    yield guard
    for core in made:
        core.close()


def _reading(free_mb: float, free_percent: float) -> DiskReading:
    return DiskReading("/data", free_mb, free_percent, required_mb=1024, required_percent=5.0)


@pytest.mark.parametrize(
    ("free_mb", "free_percent", "low"),
    [
        (2048, 50.0, False),
        (1024, 5.0, False),  # exactly the thresholds: enough
        (1023.9, 50.0, True),  # too few MiB
        (4096, 4.99, True),  # too small a share
        (0, 0.0, True),
    ],
)
def test_thresholds__below_either_one_is_low(
    free_mb: float, free_percent: float, low: bool
) -> None:
    assert _reading(free_mb, free_percent).low is low


def test_reading__is_the_data_directorys_filesystem(make: Any) -> None:
    guard = make(min_free_mb=0, min_free_percent=0)
    usage = shutil.disk_usage(guard.core.data_path)
    reading = guard.reading()

    assert reading.path == str(guard.core.data_path)
    assert abs(reading.free_mb - usage.free / MIB) < 64  # others write meanwhile
    assert 0 < reading.free_percent <= 100
    assert guard.check() == "ok"
    guard.require("new submissions")  # does not raise


def test_require__below_the_threshold_raises_507_with_what_is_free_and_required(
    make: Any,
) -> None:
    guard = make(min_free_mb=1 << 30, min_free_percent=0)  # a petabyte: always short

    with pytest.raises(InsufficientStorageError) as caught:
        guard.require("uploads")

    details = caught.value.details
    assert details["required_mb"] == 1 << 30 and details["required_percent"] == 0
    assert 0 < details["free_mb"] < 1 << 30 and 0 < details["free_percent"] <= 100
    assert set(details) == {"free_mb", "required_mb", "free_percent", "required_percent"}
    message = caught.value.message
    assert message.startswith("Not enough free disk space for uploads: ")
    assert "MiB" in message and "storage.min_free_mb" in message
    assert guard.check().startswith("low on disk space: ")


def test_require__a_share_threshold_above_what_is_free_raises(make: Any) -> None:
    guard = make(min_free_mb=0, min_free_percent=100)  # no filesystem is all free

    with pytest.raises(InsufficientStorageError):
        guard.require("new submissions")


def test_cache__one_reading_per_interval_then_a_new_one(make: Any, tmp_path: Path) -> None:
    clock = Clock()
    guard = make(clock, min_free_mb=0, min_free_percent=0, check_interval_s=5)
    first = guard.reading()
    ballast = guard.core.data_path / "ballast"
    ballast.write_bytes(b"\1" * (8 * MIB))  # the filesystem changes (or others do)

    clock.now += 4.9
    assert guard.reading() is first  # reused within the interval
    clock.now += 0.2
    second = guard.reading()
    assert second is not first  # read again after it
    ballast.unlink()
