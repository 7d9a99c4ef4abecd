"""A TES task as a job: its plan (the task program's input), its runtime, its state.

A TES task runs as a job whose argv is ``[interpreter, runners/tes_task.py,
<job_dir>/tes/plan.json]``: the task program (``jobferry.runners.tes_task``, stdlib
only) stages the inputs, runs each executor in a container and delivers the outputs,
writing what happened to ``<job_dir>/tes/state-<attempt>.json`` after every step. This
module builds the plan at create time (the plan is the job's input, like a script's
uploads) and reads the state files back (``read_attempts``); ``task_state`` combines
them with the job's own state into the TES state.

One state file per attempt, though the plan is written once: the plan's state path
and container name hold ``{attempt}``, which the program replaces with
``$JOBFERRY_ATTEMPT`` (the daemon sets it in every job's environment, on every
runner). So a task requeued after its node died writes ``state-2.json`` beside
attempt 1's (whose program may even still be running on a node cut off from the
store: it cannot overwrite the new attempt's file, nor clash with its containers'
names; the new attempt removes earlier attempts' containers left on its engine, by
name), with no plan to rewrite at claim time and nothing runner-specific. When the
job ends, the attempts' files are kept in the store (``attempt_files``, read by
``services.tes_end``), so the task reads the same after retention removed its files.

Why the program runs through the *local* runner even on a docker destination: the
executors are containers the program starts itself (one per executor, each with its
own image); the docker runner would put the program inside one more container of
the destination's image, which has no container engine. The job therefore keeps its
docker destination's name (its claims, ``max_concurrent`` and node fit are the
destination's) and runs with runner ``local`` (``ExecutionService.destination``
gives such a job its runner's defaults: the daemon's interpreter, no image). The
destination's confinement goes into the plan instead: its network, the task's cpus
and memory, the configured user, and the engine the docker runner uses.

On a slurm destination with ``container: {runtime: docker|podman}`` the job runs
through the slurm runner: the batch job runs the job's copy of the task program
(``ExecutionService.spec``: the destination's interpreter, shared staging) and the
executors are containers of that runtime on the execution host. ``scancel``'s
SIGTERM reaches the task program, which removes its container (``KillWait`` must
leave it the time). The job's memory is Slurm's ``--mem`` (else Slurm gives a job
the whole node's), without the wrapper's address-space cap (``runs_task``).
"""

from __future__ import annotations

import json
import math
import os
import py_compile
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jobferry import runners
from jobferry.config import Config, DestinationConfig
from jobferry.errors import UnsatisfiableError, ValidationError
from jobferry.store.models import JobState

#: The task program (runs with the daemon's interpreter, imports nothing of jobferry).
TES_TASK_PROGRAM = Path(runners.__file__).resolve().parent / "tes_task.py"
#: Where the task program's files live in the job's directory.
TES_DIR = "tes"
#: Executor stdout/stderr kept in a task's log: the last bytes of each.
TAIL_BYTES = 64 * 1024
#: The uid:gid executors run as when neither configured nor inherited from a non-root
#: daemon (the docker runner's own default).
NOBODY = "65534:65534"
#: The docker runner's default engine address: the docker CLI's own default too.
_DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"

#: TES states by the job states they can come from (the list's state filter reads the
#: job states in SQL, then the exact TES state of each candidate).
JOB_STATES_OF: Mapping[str, tuple[str, ...]] = {
    # A running job whose task program has not begun (pending in Slurm) is QUEUED too.
    "QUEUED": (JobState.NEW.value, JobState.QUEUED.value, JobState.RUNNING.value),
    "INITIALIZING": (JobState.RUNNING.value,),
    "RUNNING": (JobState.RUNNING.value,),
    "CANCELING": (JobState.DELETING.value,),
    "CANCELED": (JobState.DELETED.value,),
    "COMPLETE": (JobState.OK.value,),
    "EXECUTOR_ERROR": (JobState.ERROR.value,),
    "SYSTEM_ERROR": (JobState.ERROR.value,),
}
#: Job states whose TES state needs the attempt's state file.
NEEDS_PHASE = frozenset({JobState.RUNNING.value, JobState.ERROR.value})


#: Replaced by the attempt's number in the plan's state path and container name.
ATTEMPT = "{attempt}"
#: Output file logs kept per attempt in the store (a wildcard may match very many).
MAX_KEPT_OUTPUTS = 10_000
#: An attempt's state file kept in the store: at most about this many bytes of JSON.
MAX_KEPT_BYTES = 8 << 20


def plan_path(job_dir: Path) -> Path:
    return job_dir / TES_DIR / "plan.json"


def state_path(job_dir: Path, attempt: int | str = 1) -> Path:
    return job_dir / TES_DIR / f"state-{attempt}.json"


def executor_user(config: Config) -> str:
    """``tes.user``, else ``runners.docker.user``, else the daemon's own uid:gid when it
    is not root, else nobody: executors never run as root by default."""
    if config.tes.user:
        return config.tes.user
    if config.runners.docker.user:
        return config.runners.docker.user
    if os.geteuid() != 0:
        return f"{os.geteuid()}:{os.getegid()}"
    return NOBODY


def container_command(config: Config, name: str, dest: DestinationConfig) -> list[str]:
    """The engine command line the task program runs ``<cmd> run ...`` with.

    A destination's ``container:`` (slurm or local; the engine on its execution
    host) comes first. A docker destination: ``tes.container_command`` or ``docker``
    on the engine its runner uses. A local destination runs containers only with an
    explicit ``tes.container_command`` (a plain local destination is not allowed the
    engine). Anything else is refused (ValidationError), and so is remote staging: the
    task program reads its plan and writes its state file in the job's directory.
    """
    configured = config.tes.container_command
    if dest.container is not None and dest.staging == "shared":
        return dest.container.argv()
    if dest.runner == "docker":
        if configured:
            return list(configured)
        url = config.runners.docker.base_url
        return ["docker"] if url == _DEFAULT_DOCKER_URL else ["docker", "-H", url]
    if dest.runner == "local" and configured:
        return list(configured)
    if dest.staging == "remote":
        why = "it stages remotely (TES tasks need the job directory shared: staging: shared)"
    elif dest.runner == "local":
        why = "it is a local destination without container: or tes.container_command"
    else:
        why = f"it is a {dest.runner} destination without container: {{runtime: docker|podman}}"
    raise ValidationError(
        f"destination {name!r} cannot run containers: {why}",
        errors={"destination": [f"Destination {name!r} cannot run containers."]},
    )


def job_runner(dest: DestinationConfig) -> str:
    """The runner of a task's job: slurm on a slurm destination (the batch job runs
    the task program on the execution host), else local (see the module's docstring)."""
    return "slurm" if dest.runner == "slurm" else "local"


def runs_task(argv: Sequence[object]) -> bool:
    """Whether a job's argv runs the task program: such a job is not given the wrapper's
    address-space cap (``ExecutionService.spec``), under which the engine's CLI cannot
    start (Go reserves far more than it uses); its containers get the memory instead.
    Nor the log caps: the program's own output is a traceback at most (the executors'
    goes to their files and the task's tails), and the caps' filters (two ``dd`` per
    stream here) cost ~10 ms of every task's start and end."""
    return len(argv) >= 2 and str(argv[1]) == str(TES_TASK_PROGRAM)


#: The interpreter's options for the task program, which needs only the standard library:
#: ``-I`` (isolated: no PYTHON* variables, no user site, not the script's directory on the
#: path) and ``-S`` (no ``site``: the daemon's virtualenv's ``.pth`` hooks cost ~25 ms of a
#: task's start, under load much more). Python >= 3.4 has both.
PROGRAM_OPTIONS = ("-I", "-S")


def run_argv(argv: list[str]) -> list[str]:
    """The argv a task's job runs (``ExecutionService.spec``): its stored argv (the
    interpreter chosen for where it runs, the program, the plan) with PROGRAM_OPTIONS;
    with the daemon's own interpreter, the program's bytecode (``compiled_program``)."""
    program = argv[1]
    if argv[0] == sys.executable and program == str(TES_TASK_PROGRAM):
        program = compiled_program() or program
    return [argv[0], *PROGRAM_OPTIONS, program, *argv[2:]]


#: (the program's mtime in ns, its size) -> its bytecode's path, None if it cannot be written.
_compiled: dict[tuple[int, int], str | None] = {}


def compiled_program() -> str | None:
    """The task program compiled by this interpreter, where an import would put it
    (``__pycache__``), once per version of its source: Python compiles a script it runs
    every time (~8 ms of a task's start, its 500 lines), never a ``.pyc`` it is given.
    None where it cannot be written (a read-only installation): the source then runs."""
    source = str(TES_TASK_PROGRAM)
    try:
        st = os.stat(source)
    except OSError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    if key not in _compiled:  # two threads may both compile: the file is replaced atomically
        try:
            _compiled[key] = py_compile.compile(source, doraise=True)
        except (OSError, py_compile.PyCompileError):
            _compiled[key] = None
    return _compiled[key]


def memory_mb(doc: Mapping[str, Any], default: int | None) -> int | None:
    """The task's ``resources.ram_gb`` in MiB (rounded up), else *default*."""
    ram = (doc.get("resources") or {}).get("ram_gb")
    return default if ram is None else max(1, math.ceil(float(ram) * 1024))


def check_disk(doc: Mapping[str, Any], data_dir: Path) -> None:
    """Refuse a task whose ``resources.disk_gb`` exceeds the whole file system its job's
    directory lives on (its inputs, volumes and outputs are there): it could never run.
    Raises UnsatisfiableError (400). What is free now is the disk guard's business."""
    disk = (doc.get("resources") or {}).get("disk_gb")
    if disk is None:
        return
    try:
        total = shutil.disk_usage(data_dir).total
    except OSError:
        return  # the data directory's own checks report it
    if float(disk) * (1 << 30) > total:
        message = (
            f"resources.disk_gb: {disk:g} GB of disk asked for, and the file system of the "
            f"job directories holds {total / (1 << 30):.1f} GB"
        )
        raise UnsatisfiableError(message, errors={"resources.disk_gb": [message]})


def build_plan(
    config: Config,
    *,
    job_id: str,
    job_dir: Path,
    doc: Mapping[str, Any],
    command: list[str],
    dest: DestinationConfig,
    cores: int,
    memory: int | None,
    network: str | None = None,
) -> dict[str, Any]:
    """The plan of a task's every attempt (``{attempt}`` in its paths: the docstring).

    *network*: a Docker network the task asked for and the operator allowed
    (``services.tes_params``): the executors join it (``--network <name>``, the task
    program's ``extra_args``) instead of the destination's rule (none, or the
    engine's default network with ``network: true``)."""
    tes = config.tes
    return {
        "task": dict(doc),
        "root": str(job_dir / TES_DIR / "root"),
        "state_path": str(state_path(job_dir, ATTEMPT)),
        "runtime": {
            "command": command,
            "user": executor_user(config),
            "network": bool(dest.network) or network is not None,
            "cpus": cores,
            "memory_mb": memory,
            "name": f"jobferry-{job_id}-{ATTEMPT}",
            "extra_args": ["--network", network] if network else [],
        },
        "file_roots": list(tes.file_roots),
        "http_hosts": list(tes.http_hosts),
        "tail_bytes": TAIL_BYTES,
    }


def write_plan(job_dir: Path, plan: Mapping[str, Any]) -> Path:
    """Write the plan into the job's directory (0600: it may hold inline inputs)."""
    path = plan_path(job_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(plan, handle)
    return path


def read_state(job_dir: Path, attempt: int = 1) -> dict[str, Any] | None:
    """An attempt's state file, or None (not written yet, unreadable, on another node's
    disk, or torn: the program renames a whole file into place, so a torn one is
    only ever a foreign file)."""
    try:
        data = json.loads(state_path(job_dir, attempt).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def attempt_files(job_dir: Path, attempts: int) -> list[dict[str, Any] | None]:
    """The state files of attempts 1..*attempts* (None for one that wrote none): what
    the store keeps of a task's logs at its end, bounded whatever the task did. Each
    keeps at most ``MAX_KEPT_OUTPUTS`` output file logs, and executor logs' tails
    while the attempt's file is within ``MAX_KEPT_BYTES`` (a task of very many
    executors: the oldest tails go first); a system log line says what was left out."""
    found = [read_state(job_dir, n) for n in range(1, attempts + 1)]
    for state in found:
        if state is None:
            continue
        lines = state.get("system_logs")
        lines = state["system_logs"] = list(lines) if isinstance(lines, list) else []
        outputs = state.get("outputs")
        if isinstance(outputs, list) and len(outputs) > MAX_KEPT_OUTPUTS:
            state["outputs"] = outputs[:MAX_KEPT_OUTPUTS]
            lines.append(f"{len(outputs) - MAX_KEPT_OUTPUTS} more output files not listed")
        logs = state.get("logs")
        size = len(json.dumps(state))
        cut = 0
        for log in logs if isinstance(logs, list) and size > MAX_KEPT_BYTES else []:
            if size <= MAX_KEPT_BYTES:
                break
            if isinstance(log, dict):
                for key in ("stdout", "stderr"):
                    size -= len(json.dumps(log.pop(key, "")))
                cut += 1
        if cut:
            lines.append(f"stdout and stderr of the first {cut} executors not kept (too long)")
    return found
