"""Confine the introspection probe: run as root inside fresh namespaces, then drop to a user.

Run as ``python -I -S confine.py UID GID WORK WORK_MB RESULT EXPOSE... -- PROGRAM ARGS...``
as the first process of new mount, PID and network namespaces (``unshare --mount
--pid --net --fork``, started by ``jobferry.argspec.sandbox``). It

1. makes the directories on the way to EXPOSE paths (the interpreter) reachable to
   the user where they are not (``/root`` is often 0700): such a directory is
   covered by an empty tmpfs into which only the needed entry is bound back;
2. remounts every mount of the namespace read-only, so the script writes nothing
   outside its scratch space whatever the file modes say (``/tmp`` included);
3. mounts a private tmpfs of WORK_MB MiB on WORK (the script's working directory,
   gone with the namespace) and binds RESULT (a file the daemon made) writable;
4. forks: the child drops to UID/GID (no supplementary groups, no new privileges)
   and execs PROGRAM; this process stays PID 1 of the namespace, reaps, and exits
   with the child's status (128+N for a signal N, as shells do). When it exits,
   the kernel kills every process left in the namespace, including children that
   called ``setsid()``.

Standalone: standard library only, never imports jobferry, runs on the daemon's
Python. Exit status 125 with a message on stderr when confinement fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_RELATIME = 1 << 21
PR_SET_NO_NEW_PRIVS = 38
MNT_DETACH = 2
# statvfs f_flag bits that a bind remount must keep (same values as the MS_ flags).
_KEEP = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class ConfineError(Exception):
    """Confinement could not be set up; the probe must not run."""


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data) if data else None):
        err = ctypes.get_errno()
        raise ConfineError(f"mount {source} on {target} ({flags:#x}): {os.strerror(err)}")


def _unescape(field: str) -> str:
    """Undo /proc/self/mounts' octal escapes (``\\040`` for a space)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _traversable(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _expose(paths: list[str], uid: int, gid: int, hold: str) -> None:
    """Cover each untraversable directory on the way to *paths* with a tmpfs holding
    only the entries those paths need (bound back from the original)."""
    needed: dict[str, set[str]] = {}
    for path in paths:
        parts = os.path.abspath(path).split(os.sep)[1:]
        for depth in range(1, len(parts)):
            directory = os.sep + os.path.join(*parts[:depth])
            if not _traversable(directory, uid, gid):
                needed.setdefault(directory, set()).add(parts[depth])
    for index, directory in enumerate(sorted(needed, key=lambda d: d.count(os.sep))):
        held = []
        for number, name in enumerate(sorted(needed[directory])):
            source = os.path.join(directory, name)
            spot = os.path.join(hold, f"{index}-{number}")
            if os.path.isdir(source):
                os.mkdir(spot)
            else:
                open(spot, "w").close()
            _mount(source, spot, None, MS_BIND | MS_REC)
            held.append((name, spot, os.path.isdir(source)))
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for name, spot, is_dir in held:
            target = os.path.join(directory, name)
            if is_dir:
                os.mkdir(target)
            else:
                open(target, "w").close()
            _mount(spot, target, None, MS_MOVE)


def _read_only_everywhere() -> None:
    """Remount every mount of this namespace read-only, keeping its other flags."""
    with open("/proc/self/mounts") as mounts:
        points = [_unescape(line.split()[1]) for line in mounts if line.strip()]
    for point in points:
        try:
            flags = os.statvfs(point).f_flag & _KEEP
        except OSError:
            continue  # covered by a later mount: not reachable, nothing to do
        _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def _confine(uid: int, gid: int, work: str, work_mb: int, result: str, expose: list[str]) -> None:
    hold = os.path.join(os.path.dirname(result), "hold")
    os.mkdir(hold, 0o700)
    _expose(expose, uid, gid, hold)
    _read_only_everywhere()
    _mount(
        "tmpfs",
        work,
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"mode=0700,uid={uid},gid={gid},size={work_mb}m",
    )
    _mount(result, result, None, MS_BIND)  # a bind copies the read-only flag: lift it
    _mount(None, result, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _drop(uid: int, gid: int, work: str) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise ConfineError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    os.chdir(work)


def main(argv: list[str]) -> int:
    try:
        split = argv.index("--")
        uid, gid, work, work_mb, result, *expose = argv[1:split]
        program = argv[split + 1 :]
        _confine(int(uid), int(gid), work, int(work_mb), result, expose)
    except (ConfineError, OSError, ValueError) as exc:
        sys.stderr.write(f"jobferry: cannot confine the introspection: {exc}\n")
        return 125
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            _drop(int(uid), int(gid), work)
            os.execve(program[0], program, os.environ)
        except BaseException as exc:  # noqa: BLE001 - report anything, never return
            os.write(2, f"jobferry: cannot start the probe: {exc}\n".encode())
        os._exit(125)
    while True:  # PID 1: reap orphans until the probe itself ends
        pid, status = os.wait()
        if pid == child:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


if __name__ == "__main__":
    os._exit(main(sys.argv))
