"""Read a script's argparse parameters without running the script in the daemon.

``introspect_script`` runs ``probe.py`` under the script's interpreter in a
throwaway process: isolated mode, on a copy of the script, in a fresh empty
working directory, with a minimal environment and resource limits, confined by
``sandbox`` (an unprivileged user, and where the platform allows a read-only
filesystem, no network and a PID namespace that takes every process the script
started down with it). The probe writes the parser's description as JSON to a
file; it is validated here into a ``ScriptSpec`` and never trusted blindly, since
the script's own code ran in that process and could have written anything.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from jobferry.argspec import sandbox
from jobferry.errors import IntrospectionError

#: The probe script, run by the script's interpreter.
PROBE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe.py")

ACTIONS = frozenset(
    ("store", "store_true", "store_false", "store_const", "append", "append_const", "count")
    + ("extend",)
)
TYPES = frozenset({"str", "int", "float", "bool", "file"})
_VALUE_ACTIONS = frozenset({"store", "append", "extend"})
_OUTPUT_TAIL = 4096
_MAX_RESULT = 8 * 1024 * 1024
_NOFILE = 256
_FSIZE = 64 * 1024 * 1024
_SCRATCH_PREFIX = "jobferry-introspect-"


@dataclass(frozen=True)
class ParamSpec:
    """One argparse argument of a script, as the probe described it.

    ``action`` is one of ``ACTIONS``; ``type`` one of ``TYPES`` (``"file"`` for
    ``argparse.FileType``, with ``file_mode`` and ``is_output``; ``"bool"`` for
    ``store_true``/``store_false``; ``"int"`` for ``count``; ``"str"`` for any
    other callable, whose name is ``type_name``). ``nargs`` is None, ``"?"``,
    ``"*"``, ``"+"`` or an int. ``default``, ``const`` and ``choices`` hold
    JSON data (objects that are not became their ``str()``).
    """

    dest: str
    option_strings: tuple[str, ...]
    positional: bool
    action: str
    nargs: str | int | None
    type: str
    file_mode: str | None
    is_output: bool
    choices: tuple[Any, ...] | None
    default: Any
    const: Any
    required: bool
    help: str | None
    metavar: str | None
    group: str | None
    type_name: str | None = None

    @property
    def display_name(self) -> str:
        """The name users know the parameter by: its longest option without dashes, or dest."""
        if not self.option_strings:
            return self.dest
        longest = max(self.option_strings, key=len)
        return longest.lstrip(longest[0]) or self.dest

    @property
    def is_flag(self) -> bool:
        """Whether this is a ``store_true``/``store_false`` switch."""
        return self.action in ("store_true", "store_false")

    @property
    def takes_values(self) -> bool:
        """Whether the user gives values (rather than just the option)."""
        return self.action in _VALUE_ACTIONS

    @property
    def is_input_file(self) -> bool:
        """Whether values name files the user uploads."""
        return self.type == "file" and not self.is_output

    @property
    def is_output_file(self) -> bool:
        """Whether values name files the script writes in the job directory."""
        return self.type == "file" and self.is_output

    def to_dict(self) -> dict[str, Any]:
        """Return the parameter as JSON data (the probe's format)."""
        data = asdict(self)
        data["option_strings"] = list(self.option_strings)
        data["choices"] = None if self.choices is None else list(self.choices)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamSpec:
        """Build a parameter from JSON data, checking every field.

        Raises:
            IntrospectionError: a field is missing or has the wrong type.
        """
        check = _Checker(data, f"parameter {data.get('dest')!r}")
        option_strings = check.items("option_strings", str)
        if any(not s or s[0].isalnum() or "\0" in s or s.isspace() for s in option_strings):
            check.fail("option_strings")
        positional = check.value("positional", bool)
        action = check.value("action", str)
        nargs = data.get("nargs")
        if not (
            nargs in (None, "?", "*", "+")
            or (isinstance(nargs, int) and not isinstance(nargs, bool) and nargs > 0)
        ):
            check.fail("nargs")
        if action not in ACTIONS or (positional and action not in _VALUE_ACTIONS):
            check.fail("action")
        if nargs is not None and action not in _VALUE_ACTIONS:
            check.fail("nargs")
        type_ = check.value("type", str)
        if type_ not in TYPES:
            check.fail("type")
        dest = check.value("dest", str)
        if not dest or positional == bool(option_strings):
            check.fail("dest")
        choices = check.optional("choices", list)
        return cls(
            dest=dest,
            option_strings=tuple(option_strings),
            positional=positional,
            action=action,
            nargs=nargs,
            type=type_,
            file_mode=check.optional("file_mode", str),
            is_output=check.value("is_output", bool),
            choices=None if choices is None else tuple(choices),
            default=data.get("default"),
            const=data.get("const"),
            required=check.value("required", bool),
            help=check.optional("help", str),
            metavar=check.optional("metavar", str),
            group=check.optional("group", str),
            type_name=check.optional("type_name", str),
        )


@dataclass(frozen=True)
class MutexGroup:
    """A mutually exclusive group: at most one of ``dests`` (exactly one if required)."""

    required: bool
    dests: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the group as JSON data."""
        return {"required": self.required, "dests": list(self.dests)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MutexGroup:
        """Build a group from JSON data.

        Raises:
            IntrospectionError: a field is missing or has the wrong type.
        """
        check = _Checker(data, "mutually exclusive group")
        return cls(required=check.value("required", bool), dests=tuple(check.items("dests", str)))


@dataclass(frozen=True)
class ScriptSpec:
    """What a script's parser declares: its parameters in declaration order."""

    description: str | None
    version: str | None
    params: tuple[ParamSpec, ...]
    mutually_exclusive: tuple[MutexGroup, ...] = ()
    prog: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as JSON data (for storage)."""
        return {
            "description": self.description,
            "version": self.version,
            "prog": self.prog,
            "params": [param.to_dict() for param in self.params],
            "mutually_exclusive": [group.to_dict() for group in self.mutually_exclusive],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScriptSpec:
        """Build a spec from JSON data (the probe's result or ``to_dict()``'s).

        Raises:
            IntrospectionError: the data is malformed.
        """
        if not isinstance(data, Mapping):
            raise IntrospectionError("the probe's result is malformed: not an object")
        check = _Checker(data, "script")
        params = check.items("params", Mapping)
        groups = data.get("mutually_exclusive") or []
        if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
            check.fail("mutually_exclusive")
        return cls(
            description=check.optional("description", str),
            version=check.optional("version", str),
            params=tuple(ParamSpec.from_dict(param) for param in params),
            mutually_exclusive=tuple(MutexGroup.from_dict(group) for group in groups),
            prog=check.optional("prog", str),
        )


class _Checker:
    """Read typed fields out of untrusted JSON data."""

    def __init__(self, data: Mapping[str, Any], what: str) -> None:
        self.data = data
        self.what = what

    def fail(self, key: str) -> Any:
        raise IntrospectionError(f"the probe's result is malformed: {self.what}: bad {key!r}")

    def value(self, key: str, kind: type) -> Any:
        value = self.data.get(key)
        if not isinstance(value, kind):
            self.fail(key)
        return value

    def optional(self, key: str, kind: type) -> Any:
        value = self.data.get(key)
        return None if value is None else self.value(key, kind)

    def items(self, key: str, kind: type) -> list[Any]:
        items = self.value(key, list)
        if not all(isinstance(item, kind) for item in items):
            self.fail(key)
        return items


def introspect_script(
    script_path: str,
    *,
    interpreter: str,
    timeout_s: float,
    memory_mb: int,
    user: str | None = None,
) -> ScriptSpec:
    """Describe a script's argparse parameters by running the probe on it.

    Blocking: call it from a worker thread. The script's top-level code runs in
    a child process (never in this one) until it calls ``parse_args()``, confined
    as ``jobferry.argspec.sandbox`` describes: as ``user`` (default ``nobody``) when
    this process is root, on a copy of the script in an empty scratch directory,
    where possible with a read-only filesystem and no network; everything it
    started is ended afterwards, and the scratch directory removed.

    Args:
        script_path: The script file.
        interpreter: The Python interpreter to run it with.
        timeout_s: Wall-clock limit; the whole process tree is killed after it.
        memory_mb: Address-space limit of the child process.
        user: The unprivileged user to run it as (only when this process is root).

    Returns:
        The parser's description, version, parameters and exclusive groups.

    Raises:
        IntrospectionError: the script has no usable parser, crashed, timed out,
            or the probe could not run.
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError("timeout_s and memory_mb must be positive")
    script = os.path.abspath(script_path)
    if not os.path.isfile(script):
        raise IntrospectionError(f"the script does not exist: {script_path}")
    how = sandbox.confinement(user)
    if how.mode == "session":
        sandbox.sweep_orphans()
    _remove_orphaned_scratch()
    tmp = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{sandbox.owner()}-")
    try:
        work, copy, probe, result_path = _layout(tmp, script, how)
        limits = {
            "as": memory_mb * 1024 * 1024,
            "cpu": math.ceil(timeout_s) + 1,
            "nofile": _NOFILE,
            "fsize": _FSIZE,
            "core": 0,
        }
        argv = [interpreter, "-I", probe, copy, result_path]
        argv += [f"{name}={value}" for name, value in limits.items()]
        marker = sandbox.new_marker()
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LANG": "C.UTF-8",
            "HOME": work,
            "TMPDIR": work,
            sandbox.MARKER: marker,
        }
        log_path = os.path.join(tmp, "output.log")
        with open(log_path, "wb") as log:
            proc = sandbox.launch(argv, how=how, work=work, result=result_path, env=env, log=log)
            try:
                finished = _wait_unreaped(proc.pid, timeout_s)
            finally:
                _kill_group(proc.pid)  # also ends anything the script started
                proc.wait()
                sandbox.end_tree(marker)  # and what left the group (setsid)
        output = _tail(log_path)
        if not finished:
            raise IntrospectionError(
                f"reading the script's parser took longer than {timeout_s:g}s", output=output
            )
        returncode = proc.returncode
        if how.mode == "namespaces":
            if returncode == sandbox.CONFINE_FAILED:
                raise IntrospectionError("cannot confine the introspection", output=output)
            if returncode > 128:  # confine.py reports a signal N as 128+N
                returncode = 128 - returncode
        return _read_result(result_path, returncode, output)
    finally:
        _remove_tree(tmp)


def _remove_orphaned_scratch() -> None:
    """Remove the scratch directories of processes that died mid-introspection (kill -9)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), _SCRATCH_PREFIX + "*")):
        name = os.path.basename(path)[len(_SCRATCH_PREFIX) :].rsplit("-", 1)[0]
        if name.count("-") == 1 and not sandbox.owner_alive(name):
            _remove_tree(path)


def _layout(tmp: str, script: str, how: sandbox.Confinement) -> tuple[str, str, str, str]:
    """Prepare the scratch directory: the script's and the probe's copies (readable by
    the user), the result file (writable by it) and the empty working directory.

    Returns:
        The working directory, the script's copy, the probe's copy and the result file.
    """
    os.chmod(tmp, 0o755)
    source = os.path.join(tmp, "script")
    os.mkdir(source, 0o755)
    copy = os.path.join(source, os.path.basename(script))
    shutil.copyfile(script, copy)
    probe = os.path.join(tmp, "probe.py")
    shutil.copyfile(PROBE_PATH, probe)
    for path in (copy, probe):
        os.chmod(path, 0o644)
    work = os.path.join(tmp, "work")
    os.mkdir(work, 0o700)
    result_path = os.path.join(tmp, "result.json")
    with open(result_path, "wb"):
        pass
    os.chmod(result_path, 0o600)
    if how.uid is not None and how.gid is not None:
        os.chown(result_path, how.uid, how.gid)
        os.chown(work, how.uid, how.gid)
    return work, copy, probe, result_path


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait for the child to end without reaping it, so its pid keeps naming its group.

    Returns:
        True if it ended within ``timeout_s``, False otherwise.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # reaped by someone else
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _kill_group(pgid: int) -> None:
    """Send SIGKILL to every process of the group, if any is left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str) -> str:
    """Return the last few KB of the probe's output."""
    try:
        with open(path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - _OUTPUT_TAIL))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _status(returncode: int | None) -> str:
    """Describe how the probe process ended."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _read_result(path: str, returncode: int | None, output: str) -> ScriptSpec:
    """Read and check the probe's JSON result."""
    try:
        with open(path, "rb") as result:
            raw = result.read(_MAX_RESULT + 1)
    except OSError:
        raw = b""
    if not raw or len(raw) > _MAX_RESULT:
        detail = output.strip().splitlines()[-1:] or ["no output"]
        raise IntrospectionError(
            f"the script's parser could not be read ({_status(returncode)}): {detail[0]}",
            output=output,
        )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise IntrospectionError("the probe's result is not valid JSON", output=output) from exc
    if not isinstance(data, dict):
        raise IntrospectionError("the probe's result is malformed: not an object", output=output)
    if data.get("ok") is not True:
        error = data.get("error")
        message = error if isinstance(error, str) and error else "the probe failed"
        raise IntrospectionError(message, output=output)
    return ScriptSpec.from_dict(data)


def _remove_tree(path: str) -> None:
    """Delete the temporary directory, even parts the script made read-only."""
    for parent, dirnames, _files in os.walk(path):
        for name in dirnames:
            target = os.path.join(parent, name)
            try:
                if not os.path.islink(target):
                    os.chmod(target, stat.S_IRWXU)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
