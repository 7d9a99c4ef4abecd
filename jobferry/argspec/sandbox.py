"""Where and as whom the introspection probe runs, and how its process tree is ended.

Reading a script's parser runs the script's top-level code, which may be hostile.
Two confinements, chosen once per process (``confinement()``):

``namespaces`` (the daemon runs as root and util-linux ``unshare``/``setpriv`` can
make namespaces here): the probe runs in new mount, PID and network namespaces
(``confine.py`` sets them up) as the unprivileged introspection user. The whole
filesystem is read-only to it except a private size-limited tmpfs as working
directory and the result file; the network has only a loopback that is down; the
namespace's PID 1 ends when the probe does and the kernel then kills every process
left in it, ``setsid()`` or not. ``setpriv --pdeathsig KILL`` makes the chain die
with the daemon's thread that started it (kill -9 of the daemon included).

``session`` (not root, or no namespaces, e.g. an unprivileged container): the probe
runs in its own session, as the introspection user if the daemon is root. Files the
user may write stay writable and the network reachable. Afterwards its process
group is killed and every process carrying its marker in the environment (which
children that called ``setsid()`` inherit) is swept with psutil; processes of dead
daemons' probes are swept at the next introspection.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported where used: the command-check worker imports this
    import psutil  # package with -S (no site-packages), so never at import time

from jobferry.errors import IntrospectionError

CONFINE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "confine.py")
#: Environment variable that marks every process of a probe run (session mode sweep).
MARKER = "JOBFERRY_INTROSPECTION"
#: Size of the probe's private working directory (namespaces mode), MiB.
WORK_MB = 64
#: A script's exit through confine.py: 125 means confinement failed.
CONFINE_FAILED = 125


@dataclass(frozen=True)
class Confinement:
    """How probe runs are confined: the mode and the user (None: the daemon's own)."""

    mode: Literal["namespaces", "session"]
    uid: int | None
    gid: int | None


def confinement(user: str | None) -> Confinement:
    """Decide how to confine probes: ``user`` (default ``nobody``) only matters as root.

    Raises:
        IntrospectionError: the user does not exist.
    """
    if os.geteuid() != 0:
        return Confinement("session", None, None)
    name = user or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise IntrospectionError(f"scripts.introspection_user {name!r} does not exist") from None
    uid, gid = entry.pw_uid, entry.pw_gid
    mode: Literal["namespaces", "session"] = "namespaces" if namespaces_work() else "session"
    return Confinement(mode, None, None) if uid == 0 else Confinement(mode, uid, gid)


@functools.cache
def namespaces_work() -> bool:
    """Whether ``setpriv``, ``unshare`` and the mount/PID/network namespaces work here."""
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        return False
    try:
        result = subprocess.run(
            _namespace_prefix() + ["true"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _namespace_prefix() -> list[str]:
    return [
        "setpriv", "--pdeathsig", "KILL", "--",
        "unshare", "--mount", "--pid", "--net", "--fork", "--kill-child", "--mount-proc", "--",
    ]  # fmt: skip


def owner() -> str:
    """This process as ``pid-starttime``: names its probe runs and scratch directories."""
    return f"{os.getpid()}-{_started(os.getpid())}"


def owner_alive(name: str) -> bool:
    """Whether the process ``owner()`` returned ``name`` in is still running."""
    pid, _, started = name.partition("-")
    return pid.isdigit() and _started(int(pid)) == started


def new_marker() -> str:
    """A marker naming this process and one probe run."""
    return f"{owner()}-{uuid.uuid4().hex}"


def launch(
    probe_argv: list[str],
    *,
    how: Confinement,
    work: str,
    result: str,
    env: dict[str, str],
    log: IO[bytes],
) -> subprocess.Popen[bytes]:
    """Start the probe (``probe_argv``: interpreter first) confined as ``how`` says.

    The process returned leads a new session; killing its group and calling
    ``end_tree()`` afterwards ends everything the script started.

    Raises:
        IntrospectionError: the interpreter cannot be found or started.
    """
    interpreter = shutil.which(probe_argv[0]) or probe_argv[0]
    argv = [interpreter, *probe_argv[1:]]
    drop = how.mode == "session" and how.uid is not None
    if how.mode == "namespaces":
        uid = 0 if how.uid is None else how.uid
        gid = 0 if how.gid is None else how.gid
        expose = [interpreter, os.path.realpath(interpreter)]
        confine = [sys.executable, "-I", "-S", CONFINE_PATH, str(uid), str(gid), work]
        argv = _namespace_prefix() + confine + [str(WORK_MB), result, *expose, "--", *argv]
    try:
        return subprocess.Popen(
            argv,
            cwd=work if how.mode == "session" else "/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            user=how.uid if drop else None,
            group=how.gid if drop else None,
            extra_groups=[] if drop else None,
        )
    except OSError as exc:
        raise IntrospectionError(f"cannot run {probe_argv[0]}: {exc}") from exc


def end_tree(marker: str) -> None:
    """Kill every process whose environment carries ``marker`` (``setsid()`` children too).

    In namespaces mode the kernel has done it already; this is the session mode's sweep.
    """
    for proc in _marked():
        if proc[1] == marker:
            _kill(proc[0])


def sweep_orphans() -> None:
    """Kill what is left of probe runs whose process has died (e.g. a daemon killed -9)."""
    alive: dict[str, bool] = {}
    for proc, marker in _marked():
        name = marker.rsplit("-", 1)[0]
        if name not in alive:
            alive[name] = owner_alive(name)
        if not alive[name]:
            _kill(proc)


def _marked() -> list[tuple[psutil.Process, str]]:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(MARKER)
        except (psutil.Error, OSError):
            continue
        if marker:
            found.append((proc, marker))
    return found


def _kill(proc: psutil.Process) -> None:
    import psutil

    try:
        proc.kill()  # psutil checks it is still the same process
    except psutil.Error:
        pass


def _started(pid: int) -> str:
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return "gone"
