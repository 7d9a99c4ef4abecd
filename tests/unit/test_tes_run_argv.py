"""How a TES task's job runs its program (``tes_plan.run_argv``, ``ExecutionService.spec``):
isolated and without ``site``, from its bytecode under the daemon's own interpreter, and
without the wrapper's log caps; the bytecode runs a task like the source does."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobferry.services.container import Services
from jobferry.services.core import Principal
from jobferry.services.execution import ExecutionService
from jobferry.services.tes_end import record_task_end
from jobferry.services.tes_plan import TES_TASK_PROGRAM, compiled_program, run_argv
from jobferry.store.models import Job
from tests.unit.test_tes_service import make_services, task


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = make_services(tmp_path, {"enabled": True, "destination": "dock", "user": "1234:1234"})
    yield built
    built.core.close()


def test_run_argv__the_daemons_interpreter_runs_the_programs_bytecode_isolated() -> None:
    argv = run_argv([sys.executable, str(TES_TASK_PROGRAM), "/d/tes/plan.json"])
    compiled = compiled_program()
    assert compiled is not None and compiled.endswith(".pyc") and Path(compiled).is_file()
    assert argv == [sys.executable, "-I", "-S", compiled, "/d/tes/plan.json"]
    assert compiled_program() == compiled  # compiled once per version of the source


def test_run_argv__another_interpreter_or_a_copy_of_the_program_runs_the_source() -> None:
    other = run_argv(["/usr/bin/python3", str(TES_TASK_PROGRAM), "/d/tes/plan.json"])
    assert other == ["/usr/bin/python3", "-I", "-S", str(TES_TASK_PROGRAM), "/d/tes/plan.json"]
    copy = run_argv([sys.executable, "/d/script/tes_task.py", "/d/tes/plan.json"])
    assert copy == [sys.executable, "-I", "-S", "/d/script/tes_task.py", "/d/tes/plan.json"]


def test_bytecode__runs_a_task_to_its_end_and_writes_its_state(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    state = tmp_path / "state-{attempt}.json"
    plan.write_text(json.dumps({"task": {"executors": []}, "root": str(tmp_path / "root"),
                                "state_path": str(state)}))  # fmt: skip
    argv = run_argv([sys.executable, str(TES_TASK_PROGRAM), str(plan)])
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False,
                          env={"JOBFERRY_ATTEMPT": "2", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert (done.returncode, done.stderr) == (0, b"")
    written = json.loads((tmp_path / "state-2.json").read_text())
    assert written["phase"] == "COMPLETE" and written["end_time"]


def test_spec__a_task_runs_its_program_with_the_options_and_without_log_caps(
    services: Services,
) -> None:
    user, _ = services.auth.create_user("alice")
    task_id = services.tes.create(Principal(user.id, user.username, False), task())
    with services.core.sessions.begin() as session:
        job = session.get(Job, task_id)
        assert job is not None
        execution = ExecutionService(services.core, base_url="", on_end=record_task_end)
        spec = execution.spec(job)
    assert spec.argv[:3] == (services.core.config.interpreter, "-I", "-S")
    assert spec.argv[3] in (compiled_program(), str(TES_TASK_PROGRAM))
    assert spec.max_log_bytes == 0
    assert "JOBFERRY_MEMORY_KB" not in spec.env
