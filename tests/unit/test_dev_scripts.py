"""The developer scripts a new user runs first: ``scripts/test`` and ``scripts/services``.

``scripts/test`` is run for real, as a copy in a scratch tree whose ``.venv`` holds
stand-ins for python/ruff/mypy/lint-imports (a pytest that passes or fails per engine as told),
so its control flow is exercised without running the suite. ``scripts/services``
must not stop anything while other tests use the services: only its ``--dry-run``
and its syntax are checked here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stand-in for .venv/bin/python: "-c ..." is the PostgreSQL probe; "-m pytest" a pass.
if [ "$1" = -c ]; then exit "${FAKE_PG_DOWN:-0}"; fi
shift 2  # -m pytest
echo "fake pytest on $JOBFERRY_TEST_DB: $*" >>"$FAKE_CALLS"
rc=$(printf '%s' "${FAKE_RC:-}" | tr ' ' '\n' | sed -n "s/^$JOBFERRY_TEST_DB=//p")
case ${rc:-0} in
  0) echo "============ 7 passed in 1.50s ============" ;;
  1) echo "============ 2 failed, 5 passed in 1.50s ============" ;;
  5) echo "============ no tests ran in 0.01s ============" ;;
  *) echo "!!!!!!!!!!!! Interrupted !!!!!!!!!!!!" ;;
esac
exit "${rc:-0}"
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A scratch copy of scripts/test with stand-ins for everything it runs."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    services = tmp_path / "scripts" / "services"
    services.write_text("#!/usr/bin/env bash\necho 'fake services'\n")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(FAKE_PYTHON)
    for tool in ("ruff", "mypy", "lint-imports"):
        (venv / tool).write_text('#!/usr/bin/env bash\nexit "${FAKE_LINT_RC:-0}"\n')
    (tmp_path / ".venv" / ".jobferry-installed").touch()  # nothing to install
    for path in (services, *venv.iterdir()):
        path.chmod(0o755)
    return tmp_path


def run_test_script(tree: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    calls = tree / "calls"
    calls.write_text("")
    clean = {k: v for k, v in os.environ.items() if k not in ("JOBFERRY_TEST_DB", "CI")}
    result = subprocess.run(
        [str(tree / "scripts" / "test"), "-x"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "FAKE_CALLS": str(calls), **env},
    )
    return result, calls.read_text().splitlines()


def summary(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = result.stdout.splitlines()
    assert "== summary" in lines, result.stdout + result.stderr
    return lines[lines.index("== summary") + 1 :]


def test_scripts_test__a_failing_sqlite_pass_still_runs_postgres(tree: Path) -> None:
    """Guards: ``./scripts/test`` stopping at the first failing engine pass, so that a
    failure on SQLite hides the PostgreSQL result."""
    result, calls = run_test_script(tree, FAKE_RC="sqlite=1 postgres=0")
    assert calls == [
        "fake pytest on sqlite: -x",
        "fake pytest on postgres: -m not engine_independent -x",
    ]
    assert summary(result) == [
        "SQLite: FAILED, pytest exit 1 (2 failed, 5 passed in 1.50s)",
        "PostgreSQL: passed (7 passed in 1.50s)",
    ]
    assert result.returncode == 1


def test_scripts_test__summary_and_exit_status_of_both_passes(tree: Path) -> None:
    """Guards: a PostgreSQL failure after a green SQLite pass going unreported, and
    pytest's exit 5 (no tests selected on one engine) counted as a failure."""
    result, _ = run_test_script(tree, FAKE_RC="sqlite=0 postgres=1")
    assert summary(result) == [
        "SQLite: passed (7 passed in 1.50s)",
        "PostgreSQL: FAILED, pytest exit 1 (2 failed, 5 passed in 1.50s)",
    ]
    assert result.returncode == 1

    result, _ = run_test_script(tree, FAKE_RC="sqlite=0 postgres=5")
    assert summary(result) == [
        "SQLite: passed (7 passed in 1.50s)",
        "PostgreSQL: passed (no tests selected)",
    ]
    assert result.returncode == 0

    result, calls = run_test_script(tree, FAKE_RC="sqlite=2 postgres=0")  # interrupted
    assert calls == ["fake pytest on sqlite: -x"]
    assert result.returncode == 2

    # ruff, mypy and the import rules still stop early
    result, calls = run_test_script(tree, FAKE_LINT_RC="1")
    assert calls == [] and result.returncode != 0

    result, _ = run_test_script(tree, FAKE_PG_DOWN="1", CI="true")
    assert summary(result)[-1] == "PostgreSQL: FAILED (PostgreSQL does not answer)"
    assert result.returncode == 1


def test_scripts_services__stop_and_clean_dry_run_touch_nothing() -> None:
    """Guards: no way to stop or remove what ``scripts/services`` started (six services,
    test images, /var/lib/jobferry-test, logs); the dry run names every one of them
    and acts on none (the services stay up for the other tests)."""
    script = ROOT / "scripts" / "services"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("scripts/services runs as root only, and CI runs as root")
        pytest.skip("scripts/services runs as root only")
    before = _service_pids()
    stop = subprocess.run(
        [str(script), "stop", "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert stop.returncode == 0, stop.stderr
    for what in ("dockerd", "munged", "slurmctld", "slurmd", "PostgreSQL"):
        assert what in stop.stdout, (what, stop.stdout)
    assert "would" in stop.stdout
    clean = subprocess.run(
        [str(script), "clean", "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert clean.returncode == 0, clean.stderr
    for what in ("/var/lib/jobferry-test", "/var/log/jobferry-test", "jobferry-test/python:1"):
        assert what in clean.stdout, (what, clean.stdout)
    assert _service_pids() == before  # nothing was stopped
    assert Path("/var/lib/jobferry-test").exists() or not before


def _service_pids() -> dict[str, str]:
    """The pid files scripts/services' daemons write, and what they hold."""
    found = {}
    for path in ("/var/run/docker.pid", "/run/munge/munged.pid", "/run/slurmctld.pid"):
        if os.path.exists(path):
            found[path] = Path(path).read_text().strip()
    return found
