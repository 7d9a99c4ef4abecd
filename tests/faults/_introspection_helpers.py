"""Helpers of the hostile-introspection fault tests: finding a script's processes."""

from __future__ import annotations

import os

import psutil
import pytest

from jobferry.argspec import sandbox


def processes_with(token: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``token`` (a script's unique name)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
                if any(token in part for part in proc.cmdline()):
                    found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_all(token: str) -> None:
    """Clean up after a failing test: kill what is left of the script's processes."""
    for proc in processes_with(token):
        try:
            proc.kill()
        except psutil.Error:
            pass


def need_namespaces() -> None:
    """The confinement under test needs root and working namespaces."""
    if os.geteuid() == 0 and sandbox.namespaces_work():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("hostile introspection needs root and namespaces (unshare) with CI=true")
    pytest.skip("needs root and working mount/PID/network namespaces")
