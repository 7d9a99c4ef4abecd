"""conf/systemd/jobferry.service: systemd-analyze accepts it, and it says what the daemon needs.

``systemd-analyze verify`` checks every key and value (and that ExecStart's program
exists: the copy checked points at this test run's ``jobferry``). It comes with
Debian's ``systemd`` package (scripts/services installs it); without it the test is
skipped on a developer's machine and fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobferry.daemon.supervisor import EXIT_CRASHED
from tests.helpers import DEADLINE_S, ROOT

pytestmark = pytest.mark.engine_independent

UNIT = ROOT / "conf" / "systemd" / "jobferry.service"
INSTALLED = "/usr/local/bin/jobferry"


def settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (comments skipped), values in order."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_unit__systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is missing (Debian package systemd; scripts/services)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    program = Path(sys.executable).parent / "jobferry"
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} " in text
    copy = tmp_path / "jobferry.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={program} "))

    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )

    # Unknown keys and bad values are warnings: rc 0 but a line naming the unit.
    assert result.returncode == 0, result.stderr
    assert copy.name not in result.stdout + result.stderr, result.stdout + result.stderr


def test_systemd_unit__notify_dedicated_user_state_dir_watchdog_restart_hardening() -> None:
    unit = settings()

    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] and "DynamicUser" not in unit
    assert (unit["User"], unit["Group"]) == (["jobferry"], ["jobferry"])
    assert unit["StateDirectory"] == ["jobferry"]
    assert unit["ExecStart"] == [f"{INSTALLED} serve --config /etc/jobferry/jobferry.yml"]
    # A crashed background task exits 70: on-failure restarts every non-zero status.
    assert EXIT_CRASHED == 70
    assert unit["Restart"] == ["on-failure"]
    assert str(EXIT_CRASHED) not in " ".join(unit.get("RestartPreventExitStatus", []))
    # Running local jobs outlive a restart (re-attached): only the daemon is signalled.
    assert unit["KillMode"] == ["process"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert unit[key] == [value], key
    for breaks_jobs in ("PrivateDevices", "SystemCallFilter", "MemoryDenyWriteExecute"):
        assert breaks_jobs not in unit, breaks_jobs
