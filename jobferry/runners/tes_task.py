"""The task program of a GA4GH TES task: ``python3 tes_task.py PLAN_JSON``.

Why a standalone script: it runs on the execution host (local, Slurm node) as the job's
argv under the job wrapper, so it may be copied there alone. It needs only the
standard library of Python 3.8 and the container CLI of the plan (``docker`` or
``podman``), and imports nothing of jobferry.

The plan (written by ``services/tes.py``) holds the normalized task, ``root`` (the host
directory that mirrors the container: container path P lives at root + P),
``state_path``, ``runtime`` (command, user, network, cpus, memory_mb, name,
extra_args), ``file_roots``, ``http_hosts`` and ``tail_bytes``. The program stages the
inputs, runs the executors one after another, each in a container confined as every
jobferry container is (numeric non-root user, no capabilities, no new privileges, no
network unless the plan allows it), stages the outputs, and rewrites the state file
(atomically) after every step. Exit status: 0 COMPLETE, 1 EXECUTOR_ERROR,
2 SYSTEM_ERROR, 143 canceled (SIGTERM: the running container is removed).

Threat model: the task's author names paths and URLs, and the containers write into
root. So ``file://`` URLs must resolve (realpath) inside ``file_roots``; every file is
then reached by a descriptor walk that follows no symlink (a path swapped for a symlink
after the check fails instead of escaping); a symlink met inside a DIRECTORY input is
followed only when it resolves inside the file roots; the container's own symlinks in
root are never followed (no output, stdout or stdin leaves or reads outside root).
http(s) goes only to ``http_hosts``, without proxies or redirects.
"""

from __future__ import annotations

import errno
import glob
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

CHUNK = 1 << 16
HTTP_TIMEOUT_S = 60
#: Seconds the container CLI may take to remove a container or to end after that.
KILL_TIMEOUT_S = 60
EXIT = {"COMPLETE": 0, "EXECUTOR_ERROR": 1, "SYSTEM_ERROR": 2, "CANCELED": 143}
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TaskError(Exception):
    """Staging or running failed for a reason the task's system log names: SYSTEM_ERROR."""


class Canceled(BaseException):
    """SIGTERM arrived (a BaseException, so no ``except Exception`` swallows it)."""


def now() -> str:
    """RFC 3339 UTC with microseconds and ``Z``, as the TES views show it."""
    when = datetime.now(timezone.utc)  # noqa: UP017 (datetime.UTC is Python 3.11+)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parts_of(path: str) -> list[str]:
    """The components of a normalized absolute path (``..`` cannot climb above ``/``)."""
    return [p for p in os.path.normpath("/" + path).split("/") if p]


def open_dirs(base: str, parts: list[str], create: bool = False) -> int:
    """A descriptor of base/parts..., walked one component at a time without following
    symlinks (so it stays under *base*); missing directories are made when *create*."""
    fd = os.open(base, DIR_FLAGS)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_under(base: str, path: str, flags: int, create_dirs: bool = False) -> int:
    """Open file *path* (absolute, taken relative to *base*) without following symlinks."""
    parts = parts_of(path)
    if not parts:
        raise TaskError(f"{path}: not a file path")
    dfd = open_dirs(base, parts[:-1], create_dirs)
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    finally:
        os.close(dfd)


def copy_fd(src: int, dst: int) -> int:
    """Copy all of *src* to *dst*; the number of bytes."""
    total = 0
    while True:
        chunk = os.read(src, CHUNK)
        if not chunk:
            return total
        os.write(dst, chunk)  # a regular file: write() takes the whole chunk
        total += len(chunk)


class Tail:
    """Reads a stream to its end, writing it to an optional file and keeping its last bytes."""

    def __init__(self, stream: Any, out_fd: int | None, keep: int) -> None:
        self.stream, self.out_fd, self.keep = stream, out_fd, keep
        self.data = bytearray()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for chunk in iter(lambda: self.stream.read1(CHUNK), b""):
            if self.out_fd is not None:
                os.write(self.out_fd, chunk)
            self.data += chunk
            if len(self.data) > self.keep:
                del self.data[: len(self.data) - self.keep]

    def text(self) -> str:
        self.thread.join(KILL_TIMEOUT_S)
        return bytes(self.data).decode("utf-8", errors="replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect could lead to a host not in http_hosts: it is an error


class Task:
    """One attempt of one TES task, as the plan describes it."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.task: dict[str, Any] = plan["task"]
        self.root = os.path.abspath(plan["root"])
        self.state_path: str = plan["state_path"]
        self.rt: dict[str, Any] = plan.get("runtime") or {}
        self.file_roots = [os.path.realpath(r) for r in plan.get("file_roots") or []]
        self.http_hosts = set(plan.get("http_hosts") or [])
        self.tail_bytes = int(plan.get("tail_bytes") or 65536)
        self.state: dict[str, Any] = {
            "phase": "INITIALIZING",
            "start_time": now(),
            "end_time": None,
            "logs": [],
            "outputs": [],
            "system_logs": [],
        }
        self.http = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

    # -- the state file ------------------------------------------------------------

    def save(self) -> None:
        """Rewrite the state file atomically (tmp + rename): readers never see half of it."""
        os.makedirs(os.path.dirname(self.state_path) or ".", exist_ok=True)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(self.state, out)
        os.replace(tmp, self.state_path)

    def finish(self, phase: str) -> int:
        self.state["phase"] = phase
        self.state["end_time"] = now()
        self.save()
        return EXIT[phase]

    # -- the whole attempt ---------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        try:
            self.save()
            self.prepare()
            self.state["phase"] = "RUNNING"
            self.save()
            for index, executor in enumerate(self.task["executors"]):
                code = self.run_executor(index, executor)
                if code != 0 and not executor.get("ignore_error"):
                    return self.finish("EXECUTOR_ERROR")
            self.stage_outputs()
            return self.finish("COMPLETE")
        except Canceled:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one cancel is enough
            self.state["system_logs"].append("canceled")
            return self.finish("CANCELED")
        except TaskError as exc:
            self.state["system_logs"].append(str(exc))
        except Exception as exc:  # noqa: BLE001 - the state must still say SYSTEM_ERROR
            self.state["system_logs"].append(f"internal error: {type(exc).__name__}: {exc}")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return self.finish("SYSTEM_ERROR")

    def _on_term(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Canceled()

    # -- inputs --------------------------------------------------------------------

    def prepare(self) -> None:
        """Make root, the volumes and output directories, stage every input."""
        os.makedirs(self.root, 0o755, exist_ok=True)
        for path in self.task.get("volumes") or []:
            os.close(open_dirs(self.root, parts_of(path), create=True))
        for output in self.task.get("outputs") or []:
            os.close(open_dirs(self.root, parts_of(self.mount_dir_of(output)), create=True))
        for item in self.task.get("inputs") or []:
            where = item.get("url") or "content"
            try:
                self.stage_in(item)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise TaskError(f"staging in {where}: {exc}") from exc
            except TaskError as exc:
                raise TaskError(f"staging in {where}: {exc}") from exc
        self.hand_over()

    def stage_in(self, item: dict[str, Any]) -> None:
        path, kind = item["path"], item.get("type", "FILE")
        if "content" in item and item["content"] is not None:
            self.write_input(path, item["content"].encode("utf-8"))
            return
        url = item["url"]
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme == "file":
            base, rel = self.confine(url)
            if kind == "DIRECTORY":
                dst = open_dirs(self.root, parts_of(path), create=True)
                src = open_dirs(base, parts_of(rel))
                try:
                    self.copy_tree(src, dst, base + rel, follow=True, seen=set())
                finally:
                    os.close(src)
                    os.close(dst)
            else:
                src = open_under(base, rel, os.O_RDONLY)
                try:
                    self.expect_regular(src, url)
                    dst = self.open_input(path)
                    try:
                        copy_fd(src, dst)
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
        elif scheme in ("http", "https"):
            self.allow_host(url)
            if kind == "DIRECTORY":
                raise TaskError("DIRECTORY inputs cannot be fetched over http(s)")
            dst = self.open_input(path)
            try:
                with self.http.open(url, timeout=HTTP_TIMEOUT_S) as response:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        os.write(dst, chunk)
            finally:
                os.close(dst)
        else:
            raise TaskError(f"the URL scheme {scheme or '(none)'!r} is not supported")

    def open_input(self, path: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        return open_under(self.root, path, flags, create_dirs=True)

    def write_input(self, path: str, data: bytes) -> None:
        fd = self.open_input(path)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    @staticmethod
    def expect_regular(fd: int, what: str) -> None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TaskError(f"{what} is not a regular file")

    def confine(self, url: str) -> tuple[str, str]:
        """The file root and the path under it (``/rel``) a file:// URL resolves to."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise TaskError(f"file URL on another host {parsed.netloc!r}")
        real = os.path.realpath(urllib.parse.unquote(parsed.path))
        for base in self.file_roots:
            if real == base or real.startswith(base.rstrip("/") + "/"):
                return base, "/" + os.path.relpath(real, base)
        raise TaskError(f"{url} is outside the allowed file roots")

    def allow_host(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
        names = {f"{host}:{parsed.port}"} if parsed.port else {host}
        if parsed.port is None:
            names.add(f"{host}:{443 if parsed.scheme.lower() == 'https' else 80}")
        if not names & self.http_hosts:
            raise TaskError(f"host {parsed.netloc!r} is not an allowed http host")

    def copy_tree(self, src: int, dst: int, where: str, follow: bool, seen: set[Any]) -> None:
        """Copy directory *src* into *dst* (descriptors). Symlinks: with *follow* (inputs),
        one that resolves inside the file roots is copied as what it names, others
        are an error; without (outputs: written by the container) they are skipped."""
        st = os.fstat(src)
        if (st.st_dev, st.st_ino) in seen:
            raise TaskError(f"{where}: a symlink loop")
        seen = seen | {(st.st_dev, st.st_ino)}
        for name in sorted(os.listdir(src)):
            mode = os.stat(name, dir_fd=src, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                if not follow:
                    continue
                base, rel = self.confine("file://" + urllib.parse.quote(where + "/" + name))
                real = base + rel
                if os.path.isdir(real):
                    sub = open_dirs(base, parts_of(rel))
                    self.copy_dir_entry(sub, dst, name, where + "/" + name, follow, seen)
                else:
                    sub = open_under(base, rel, os.O_RDONLY)
                    self.copy_file_entry(sub, dst, name, where + "/" + name)
            elif stat.S_ISDIR(mode):
                sub = os.open(name, DIR_FLAGS, dir_fd=src)
                self.copy_dir_entry(sub, dst, name, where + "/" + name, follow, seen)
            elif stat.S_ISREG(mode):
                sub = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
                self.copy_file_entry(sub, dst, name, where + "/" + name)

    def copy_dir_entry(
        self, sub: int, dst: int, name: str, where: str, follow: bool, seen: set[Any]
    ) -> None:
        try:
            target = open_dirs_at(dst, name)
            try:
                self.copy_tree(sub, target, where, follow, seen)
            finally:
                os.close(target)
        finally:
            os.close(sub)

    def copy_file_entry(self, sub: int, dst: int, name: str, where: str) -> None:
        try:
            self.expect_regular(sub, where)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(name, flags, 0o644, dir_fd=dst)
            try:
                copy_fd(sub, out)
            finally:
                os.close(out)
        finally:
            os.close(sub)

    def hand_over(self) -> None:
        """Give root's files to the container's user: chown when running as root, else
        (rootless engines map users) make them group- and world-writable."""
        uid_gid = str(self.rt.get("user") or "")
        uid, _, gid = uid_gid.partition(":")
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [""] + dirnames + filenames:
                path = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(path)
                if os.geteuid() == 0 and uid:
                    os.lchown(path, int(uid), int(gid) if gid else -1)
                elif st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode):
                    os.chmod(path, 0o777 if stat.S_ISDIR(st.st_mode) else 0o666)

    # -- executors -----------------------------------------------------------------

    def mount_dir_of(self, output: dict[str, Any]) -> str:
        """The container directory an output needs: a DIRECTORY itself, a FILE's parent,
        a wildcard's deepest directory without wildcards."""
        parts = parts_of(output["path"])
        for i, part in enumerate(parts):
            if any(c in part for c in "*?["):
                return "/" + "/".join(parts[:i])
        if output.get("type") == "DIRECTORY":
            return "/" + "/".join(parts)
        return "/" + "/".join(parts[:-1])

    def mounts(self) -> list[tuple[str, bool]]:
        """(container path, read-only) of the minimal set of bind mounts: a path under
        another mounted path is covered by that mount."""
        wanted = [("/" + "/".join(parts_of(v)), False) for v in self.task.get("volumes") or []]
        for output in self.task.get("outputs") or []:
            wanted.append(("/" + "/".join(parts_of(self.mount_dir_of(output))), False))
        for item in self.task.get("inputs") or []:
            wanted.append(("/" + "/".join(parts_of(item["path"])), True))
        chosen: list[tuple[str, bool]] = []
        for path, read_only in sorted(wanted, key=lambda w: (len(parts_of(w[0])), w[1])):
            if path == "/":
                raise TaskError("refusing to mount the container's / (a volume or an output at /)")
            # Covered by a mount above it, unless that one is read-only and this is not
            # (Docker mounts the deeper path over the shallower one).
            if any(
                (path == c or path.startswith(c + "/")) and (read_only or not c_ro)
                for c, c_ro in chosen
            ):
                continue
            if any(ch in path for ch in ":,\n"):
                raise TaskError(f"{path}: a mounted path may not contain ':', ',' or newlines")
            chosen.append((path, read_only))
        return chosen

    def docker_argv(self, index: int, executor: dict[str, Any], name: str) -> list[str]:
        image, argv = executor["image"], executor["command"]
        if image.startswith("-"):
            raise TaskError(f"executors[{index}].image: may not start with '-'")
        rt = self.rt
        cmd = list(rt.get("command") or ["docker"]) + ["run", "--rm", "--name", name]
        if rt.get("user"):
            cmd += ["--user", str(rt["user"])]
        cmd += ["--security-opt", "no-new-privileges", "--cap-drop", "ALL"]
        if not rt.get("network"):
            cmd += ["--network", "none"]
        if rt.get("cpus"):
            cmd += ["--cpus", str(rt["cpus"])]
        if rt.get("memory_mb"):
            cmd += ["--memory", f"{int(rt['memory_mb'])}m"]
            cmd += ["--memory-swap", f"{int(rt['memory_mb'])}m"]
        for path, read_only in self.mounts():
            cmd += ["-v", f"{self.root}{path}:{path}" + (":ro" if read_only else "")]
        if executor.get("stdin"):
            cmd.append("-i")
        if executor.get("workdir"):
            cmd += ["-w", executor["workdir"]]
        for key, value in sorted((executor.get("env") or {}).items()):
            cmd += ["-e", f"{key}={value}"]
        cmd += list(rt.get("extra_args") or [])
        # The entrypoint is argv[0]: TES's command is an argv, whatever the image's own.
        return cmd + ["--entrypoint", argv[0], image] + list(argv[1:])

    def run_executor(self, index: int, executor: dict[str, Any]) -> int:
        """Run one executor to its end; record its log at once; its exit status."""
        name = f"{self.rt.get('name') or 'jobferry-tes'}-{index}"
        argv = self.docker_argv(index, executor, name)
        fds: dict[str, int | None] = {"stdin": None, "stdout": None, "stderr": None}
        try:
            for key in fds:
                if executor.get(key):
                    flags = os.O_RDONLY if key == "stdin" else os.O_WRONLY | os.O_CREAT
                    flags |= 0 if key == "stdin" else os.O_TRUNC
                    try:
                        fds[key] = open_under(self.root, executor[key], flags, key != "stdin")
                    except OSError as exc:
                        raise TaskError(f"executors[{index}].{key} {executor[key]}: {exc}") from exc
            workdir = executor.get("workdir")
            if workdir and any(workdir.startswith(m.rstrip("/") + "/") for m, _ in self.mounts()):
                # Docker would make it in the image, under the bind mount that hides it.
                os.close(open_dirs(self.root, parts_of(workdir), create=True))
            self.hand_over()
            log: dict[str, Any] = {"start_time": now()}
            proc: subprocess.Popen[bytes] | None = None
            tails: list[Tail] = []
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=fds["stdin"] if fds["stdin"] is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                tails.append(Tail(proc.stdout, fds["stdout"], self.tail_bytes))
                tails.append(Tail(proc.stderr, fds["stderr"], self.tail_bytes))
                code = proc.wait()
            except Canceled:
                self.remove_container(name, proc)
                if len(tails) == 2:
                    self.record(log, proc.returncode if proc else None, tails)
                raise
            self.record(log, code, tails)
            if code == 125:
                self.state["system_logs"].append(
                    f"executors[{index}]: the container runtime failed (exit 125): see its stderr"
                )
                self.save()
            return code
        finally:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)

    def record(self, log: dict[str, Any], code: int | None, tails: list[Tail]) -> None:
        log["end_time"] = now()
        log["exit_code"] = 143 if code is None else (128 - code if code < 0 else code)
        log["stdout"], log["stderr"] = tails[0].text(), tails[1].text()
        self.state["logs"].append(log)
        self.save()

    def remove_container(self, name: str, proc: subprocess.Popen[bytes] | None) -> None:
        """Kill and remove the container by name (the CLI then ends), twice if the CLI
        had to be killed: it may have created the container after the first removal."""
        rm = list(self.rt.get("command") or ["docker"]) + ["rm", "-f", name]
        subprocess.run(rm, capture_output=True, timeout=KILL_TIMEOUT_S, check=False)
        if proc is None:
            return
        try:
            proc.wait(KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run(rm, capture_output=True, timeout=KILL_TIMEOUT_S, check=False)

    # -- outputs -------------------------------------------------------------------

    def stage_outputs(self) -> None:
        for output in self.task.get("outputs") or []:
            try:
                self.stage_out(output)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise TaskError(f"staging out {output['path']} to {output['url']}: {exc}") from exc
            except TaskError as exc:
                raise TaskError(f"staging out {output['path']} to {output['url']}: {exc}") from exc

    def stage_out(self, output: dict[str, Any]) -> None:
        path, url, kind = output["path"], output["url"], output.get("type", "FILE")
        if not any(c in path for c in "*?["):
            self.deliver(path, url, kind, missing_ok=False)
            return
        prefix = output.get("path_prefix") or ""
        pattern = glob.escape(self.root) + "/" + "/".join(parts_of(path))
        for match in sorted(glob.glob(pattern)):
            inside = match[len(self.root) :]
            if not inside.startswith(prefix):
                continue
            self.deliver(inside, url + inside[len(prefix) :], kind, missing_ok=True)

    def deliver(self, path: str, url: str, kind: str, missing_ok: bool) -> None:
        """Send container path *path* (a file, or a DIRECTORY's tree) to *url*."""
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("file", "http", "https"):
            raise TaskError(f"the URL scheme {scheme or '(none)'!r} is not supported")
        if scheme != "file":
            self.allow_host(url)
        try:
            if kind == "DIRECTORY":
                src = open_dirs(self.root, parts_of(path))
            else:
                src = open_under(self.root, path, os.O_RDONLY)
        except OSError as exc:
            if missing_ok and exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                return
            what = "directory" if kind == "DIRECTORY" else "file"
            raise TaskError(f"output {what} {path} is missing or not a {what}: {exc}") from exc
        try:
            if kind == "DIRECTORY":
                for rel, fd in self.files_of(src, ""):
                    try:
                        self.send(fd, path.rstrip("/") + rel, url.rstrip("/") + rel)
                    finally:
                        os.close(fd)
            else:
                if not stat.S_ISREG(os.fstat(src).st_mode):
                    if missing_ok:
                        return
                    raise TaskError(f"output {path} is not a regular file")
                self.send(src, path, url)
        finally:
            os.close(src)

    def files_of(self, dfd: int, rel: str) -> Iterator[tuple[str, int]]:
        """(``/relative/path``, open descriptor) of every regular file under *dfd*;
        the container's symlinks are not followed."""
        for name in sorted(os.listdir(dfd)):
            mode = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
                try:
                    yield from self.files_of(sub, f"{rel}/{name}")
                finally:
                    os.close(sub)
            elif stat.S_ISREG(mode):
                yield f"{rel}/{name}", os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)

    def send(self, fd: int, path: str, url: str) -> None:
        """Deliver one file and record its output file log."""
        size = os.fstat(fd).st_size
        if urllib.parse.urlsplit(url).scheme.lower() == "file":
            base, rel = self.confine_destination(url)
            out = open_under(base, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create_dirs=True)
            try:
                size = copy_fd(fd, out)
            finally:
                os.close(out)
        else:
            with os.fdopen(os.dup(fd), "rb") as body:
                request = urllib.request.Request(url, data=body, method="PUT")
                request.add_header("Content-Length", str(size))
                request.add_header("Content-Type", "application/octet-stream")
                with self.http.open(request, timeout=HTTP_TIMEOUT_S) as response:
                    response.read()
        self.state["outputs"].append({"url": url, "path": path, "size_bytes": str(size)})
        self.save()

    def confine_destination(self, url: str) -> tuple[str, str]:
        """Like ``confine``, for a file that may not exist yet: its nearest existing
        ancestor must resolve inside the file roots (the rest is made by a walk that
        follows no symlink)."""
        parsed = urllib.parse.urlsplit(url)
        parts = parts_of(urllib.parse.unquote(parsed.path))
        if not parts:
            raise TaskError(f"{url} names no file")
        existing = len(parts)
        while existing and not os.path.lexists("/" + "/".join(parts[:existing])):
            existing -= 1
        head = "/" + "/".join(parts[:existing])
        base, rel = self.confine(f"file://{urllib.parse.quote(head)}")
        return base, rel.rstrip("/") + "/" + "/".join(parts[existing:]) if parts[existing:] else rel


def open_dirs_at(parent: int, name: str) -> int:
    """The descriptor of directory *name* under *parent*, made if missing, not a symlink."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent)
    except FileExistsError:
        pass
    return os.open(name, DIR_FLAGS, dir_fd=parent)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: tes_task.py PLAN_JSON", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as plan_file:
        plan = json.load(plan_file)
    return Task(plan).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
