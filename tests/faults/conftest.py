"""Fault-suite fixtures: a small filesystem a test can fill, mounted and removed by the test.

``small_fs(size_mb)`` mounts a size-limited tmpfs (root only) on a fresh directory
and unmounts it at the end of the test. Writes past its size fail with ENOSPC, as
on a full disk. Without root the test is skipped, or fails when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _need_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("the fault suite mounts small filesystems and needs root (CI=true)")
    pytest.skip("needs root to mount a small filesystem")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A factory: ``small_fs(20)`` is a directory on a fresh 20 MiB filesystem."""
    _need_root()
    mounted: list[Path] = []

    def make(size_mb: int) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
        mounted.append(where)
        return where

    yield make
    for where in reversed(mounted):
        # Lazy: a daemon the test killed may still be closing its files.
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem of *directory* until at most *leave_bytes* are free; returns
    the filler file (delete it to give the space back)."""
    filler = directory / ".filler"
    with open(filler, "ab") as out:
        while True:
            free = shutil.disk_usage(directory).free
            if free <= leave_bytes:
                break
            try:
                out.write(b"\0" * min(1 << 20, max(4096, free - leave_bytes)))
                out.flush()
            except OSError:
                break
    return filler
