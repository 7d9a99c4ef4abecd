"""The task program of a GA4GH TES task: ``python3 tes_task.py PLAN_JSON``.

Standalone (Python 3.8's standard library, no jobferry import): it runs on the execution host under
the job wrapper and may be copied there alone. The plan (``services/tes_plan.py``) names the task,
``root`` (container path P lives at root + P), the state file and container name (``{attempt}`` in
them is ``$JOBFERRY_ATTEMPT``, so attempts keep apart), the runtime and what may be reached. It
removes earlier attempts' containers, stages the inputs, runs the executors in turn (each in a
container confined like every jobferry one: numeric non-root user, no capabilities or new
privileges, no network unless allowed), stages the outputs, and rewrites the state file each step.

Threat model: the task's author names paths and URLs; the containers write into root.
``file://`` URLs must resolve inside ``file_roots``, then every file is reached by a
descriptor walk that follows no symlink (a path swapped for one after the check fails);
a DIRECTORY input's symlinks are followed only into the file roots; the containers'
symlinks in root never are. http(s) goes only to ``http_hosts``, without proxy or redirect.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

CHUNK, HTTP_TIMEOUT_S = 1 << 16, 60
#: Seconds the container CLI may take to remove a container, or to end after that.
KILL_TIMEOUT_S = 60
EXIT = {"COMPLETE": 0, "EXECUTOR_ERROR": 1, "SYSTEM_ERROR": 2, "CANCELED": 143}
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Non-blocking: a FIFO a container left in place of a file must not hang the task.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK
WILDCARDS = "*?["


class TaskError(Exception):
    """Staging or running failed for a reason the task's system log names: SYSTEM_ERROR."""


class Canceled(BaseException):
    """SIGTERM arrived (a BaseException, so no ``except Exception`` swallows it)."""


def now() -> str:
    """RFC 3339 UTC with microseconds and ``Z``, as the TES views show it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: UP017 (3.8)


def parts_of(path: str) -> list[str]:
    """The components of a normalized absolute path (``..`` cannot climb above ``/``)."""
    return [p for p in os.path.normpath("/" + path).split("/") if p]


def clean(path: str) -> str:
    return "/" + "/".join(parts_of(path))


def under(path: str, top: str) -> bool:
    return (path + "/").startswith(top.rstrip("/") + "/")


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Turn a failure of one staging step into a TaskError that names the step."""
    try:
        yield
    except Exception as exc:  # OSError, ValueError, http.client's (not imported up front)
        raise TaskError(f"{what}: {exc}") from exc


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    """Close descriptor *fd* after the block."""
    try:
        yield fd
    finally:
        os.close(fd)


def open_dirs(base: str, parts: list[str], create: bool = False) -> int:
    """base/parts... opened one component at a time following no symlink (to stay in base)."""
    fd = os.open(base, DIR_FLAGS)
    for part in parts:
        with opened(fd):  # the parent's descriptor, closed once the child's is open
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            fd = os.open(part, DIR_FLAGS, dir_fd=fd)
    return fd


def open_under(base: str, path: str, flags: int, create_dirs: bool = False) -> int:
    """Open regular file *path* (absolute, taken under *base*) following no symlink."""
    parts = parts_of(path)
    if not parts:
        raise TaskError(f"{path}: not a file path")
    with opened(open_dirs(base, parts[:-1], create_dirs)) as dfd:
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TaskError(f"{path} is not a regular file")
    return fd


def copy(read: Callable[[int], bytes], dst: int) -> int:
    """Copy what *read* gives until it gives nothing to descriptor *dst*; the byte count."""
    total = 0
    for chunk in iter(lambda: read(CHUNK), b""):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        total += len(chunk)
    return total


def entries(
    dfd: int, where: str, resolve: Callable[[str], tuple[int, bool]] | None, seen: Any = ()
) -> Iterator[tuple[str, int | None]]:
    """Each directory ``(/rel, None)`` and regular file ``(/rel, fd)`` (the caller closes it)
    under *dfd*, depth-first. Symlinks: skipped without *resolve* (the container's), else
    replaced by what *resolve* opens; a directory met twice on one branch is a loop."""
    st = os.fstat(dfd)
    if (st.st_dev, st.st_ino) in seen:
        raise TaskError(f"{where}: a symlink loop")
    seen = (*seen, (st.st_dev, st.st_ino))
    for name in sorted(os.listdir(dfd)):
        mode = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode) and resolve is not None:
            sub, is_dir = resolve(f"{where}/{name}")
        elif stat.S_ISDIR(mode):
            sub, is_dir = os.open(name, DIR_FLAGS, dir_fd=dfd), True
        elif stat.S_ISREG(mode):
            sub, is_dir = os.open(name, READ_FLAGS, dir_fd=dfd), False
        else:
            continue  # the container's symlinks, fifos, sockets, devices
        if not is_dir:
            yield f"/{name}", sub
            continue
        with opened(sub):
            yield f"/{name}", None
            for rel, fd in entries(sub, f"{where}/{name}", resolve, seen):
                yield f"/{name}{rel}", fd


def pump(stream: Any, out_fd: int | None, keep: int) -> tuple[threading.Thread, bytearray]:
    """Read *stream* to its end in a thread, to *out_fd* if any, keeping the last bytes."""
    data = bytearray()

    def run() -> None:
        fd = out_fd
        for chunk in iter(lambda: stream.read1(CHUNK), b""):
            try:
                if fd is not None:
                    copy(io.BytesIO(chunk).read, fd)
            except OSError:  # a full disk: keep draining, or the container blocks
                fd = None
            data.extend(chunk)
            del data[: max(0, len(data) - keep)]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, data


class Task:
    """One attempt of one TES task, as the plan describes it."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.task: dict[str, Any] = plan["task"]
        self.root = os.path.abspath(plan["root"])
        self.attempt = int(os.environ.get("JOBFERRY_ATTEMPT", "1"))  # the daemon sets it
        self.state_path: str = plan["state_path"].replace("{attempt}", str(self.attempt))
        self.rt: dict[str, Any] = plan.get("runtime") or {}
        self.names = str(self.rt.get("name") or "jobferry-tes")  # "{attempt}": the attempt's
        self.name = self.names.replace("{attempt}", str(self.attempt))
        self.cli = list(self.rt.get("command") or ["docker"])
        self.user = str(self.rt.get("user") or "65534:65534")  # never the image's (root?)
        self.file_roots = [os.path.realpath(r) for r in plan.get("file_roots") or []]
        self.http_hosts = set(plan.get("http_hosts") or [])
        self.tail_bytes = int(plan.get("tail_bytes") or 65536)
        where = {"node": os.environ.get("JOBFERRY_NODE", ""), "host": os.uname().nodename}
        self.state: dict[str, Any] = {"phase": "INITIALIZING", "start_time": now()}
        self.state.update(end_time=None, logs=[], outputs=[], system_logs=[], metadata=where)

    @functools.cached_property
    def opener(self) -> Any:
        """urllib's opener (no proxy, no redirect), made on first use: its import costs ~45 ms."""
        import urllib.request as req

        stop = {"redirect_request": lambda *args, **kwargs: None}
        no = type("NoRedirect", (req.HTTPRedirectHandler,), stop)
        return req.build_opener(req.ProxyHandler({}), no)

    def save(self) -> None:
        """Rewrite the state file atomically (tmp + rename): readers never see half of it."""
        with open(self.state_path + ".tmp", "w", encoding="utf-8") as out:
            json.dump(self.state, out)
        os.replace(self.state_path + ".tmp", self.state_path)

    def finish(self, phase: str) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end is being written
        self.state.update(phase=phase, end_time=now())
        self.save()
        return EXIT[phase]

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        try:
            self.save()
            self.prepare()
            self.state["phase"] = "RUNNING"
            self.save()
            for index, executor in enumerate(self.task["executors"]):
                if self.run_executor(index, executor) and not executor.get("ignore_error"):
                    return self.finish("EXECUTOR_ERROR")
            for output in self.task.get("outputs") or []:
                with step(f"staging out {output['path']} to {output['url']}"):
                    self.stage_out(output)
            return self.finish("COMPLETE")
        except Canceled:
            self.state["system_logs"].append("canceled")
            return self.finish("CANCELED")
        except TaskError as exc:
            self.state["system_logs"].append(str(exc))
        except Exception as exc:  # the state must still say SYSTEM_ERROR
            self.state["system_logs"].append(f"internal error: {type(exc).__name__}: {exc}")
        return self.finish("SYSTEM_ERROR")

    def _on_term(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one cancel is enough
        raise Canceled()

    def prepare(self) -> None:
        """Check output URLs (before any work), make the directories, stage the inputs."""
        old = [self.names.replace("{attempt}", str(n)) for n in range(1, self.attempt)]
        old = [f"{o}-{i}" for o in old for i in range(len(self.task["executors"]))]
        if old and (gone := ", ".join(self.remove_containers(old))):  # they may write in root
            self.state["system_logs"].append(f"removed {gone}: earlier attempts' containers")
        for output in self.task.get("outputs") or []:
            with step(f"staging out {output['path']} to {output['url']}"):
                if self.check_url(output["url"]) == "file":
                    self.confine(output["url"])
        os.makedirs(self.root, 0o755, exist_ok=True)
        for path, _ in self.mount_wants():
            os.close(open_dirs(self.root, parts_of(path), create=True))
        for item in self.task.get("inputs") or []:
            with step(f"staging in {item.get('url') or 'content'}"):
                self.stage_in(item)
        self.hand_over()

    def stage_in(self, item: dict[str, Any]) -> None:
        path, kind, url = item["path"], item.get("type", "FILE"), item.get("url") or ""
        if item.get("content") is not None:
            self.write_in(path, io.BytesIO(item["content"].encode("utf-8")).read)
            return
        if self.check_url(url) != "file":
            if kind == "DIRECTORY":
                raise TaskError("DIRECTORY inputs cannot be fetched over http(s)")
            with self.opener.open(url, timeout=HTTP_TIMEOUT_S) as response:
                self.write_in(path, response.read)
            return
        base, rel = self.confine(url)
        if kind != "DIRECTORY":
            with opened(open_under(base, rel, READ_FLAGS)) as src:
                self.write_in(path, functools.partial(os.read, src))
            return
        with opened(open_dirs(base, parts_of(rel))) as top:
            for sub, fd in entries(top, base + rel, self.resolve):
                if fd is None:
                    os.close(open_dirs(self.root, parts_of(path + sub), create=True))
                else:
                    with opened(fd):
                        self.write_in(path + sub, functools.partial(os.read, fd))

    def write_in(self, path: str, read: Callable[[int], bytes]) -> None:
        with opened(open_under(self.root, path, WRITE_FLAGS, create_dirs=True)) as dst:
            copy(read, dst)

    def check_url(self, url: str) -> str:
        """The URL's scheme, if this program can stage it (and its host is allowed)."""
        parsed = urllib.parse.urlsplit(url)
        scheme = parsed.scheme.lower()
        if scheme in ("http", "https"):
            host_port = f"{parsed.hostname}:{parsed.port or (443 if scheme == 'https' else 80)}"
            if not {parsed.netloc.rpartition("@")[2], host_port} & self.http_hosts:
                raise TaskError(f"host {parsed.netloc!r} is not an allowed http host")
        elif scheme != "file":
            raise TaskError(f"the URL scheme {scheme or '(none)'!r} is not supported")
        return scheme

    def confine(self, url: str) -> tuple[str, str]:
        """The file root and the path under it (``/rel``) that a file:// URL resolves to
        (a path that does not exist yet resolves as far as it exists)."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise TaskError(f"file URL on another host {parsed.netloc!r}")
        real = os.path.realpath(urllib.parse.unquote(parsed.path))
        for base in self.file_roots:
            if under(real, base):
                return base, "/" + os.path.relpath(real, base)
        raise TaskError(f"{url} is outside the allowed file roots")

    def resolve(self, where: str) -> tuple[int, bool]:
        """A symlink met in a DIRECTORY input, at logical path *where*: an open descriptor
        of what it names (inside the file roots, else TaskError) and whether a directory."""
        base, rel = self.confine("file://" + urllib.parse.quote(where))
        if os.path.isdir(base + rel):
            return open_dirs(base, parts_of(rel)), True
        return open_under(base, rel, READ_FLAGS), False

    def hand_over(self) -> None:
        """Give root's files to the container's user (chown as root, else make ours writable)."""
        uid, _, gid = self.user.partition(":")
        for dirpath, dirnames, filenames in os.walk(self.root):
            for path in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
                st = os.lstat(path)
                if os.geteuid() == 0 and uid:
                    os.lchown(path, int(uid), int(gid) if gid else -1)
                elif st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode):
                    os.chmod(path, 0o777 if stat.S_ISDIR(st.st_mode) else 0o666)

    def mount_wants(self) -> list[Any]:
        """Directories for volumes and outputs (a FILE's parent, a wildcard's fixed part)."""
        wanted = [(clean(v), False) for v in self.task.get("volumes") or []]
        for output in self.task.get("outputs") or []:
            parts = parts_of(output["path"])
            cut = next((i for i, p in enumerate(parts) if any(c in p for c in WILDCARDS)), None)
            if cut is None:
                cut = len(parts) - (output.get("type") != "DIRECTORY")
            wanted.append(("/" + "/".join(parts[:cut]), False))
        return wanted

    def mounts(self) -> list[tuple[str, bool]]:
        """The minimal set of bind mounts (container path, read-only): a path under another
        mounted one is covered by it, unless that is read-only and this one is not (Docker
        mounts the deeper path over the shallower one)."""
        wanted = self.mount_wants()
        wanted += [(clean(item["path"]), True) for item in self.task.get("inputs") or []]
        chosen: list[tuple[str, bool]] = []
        for path, read_only in sorted(wanted, key=lambda w: (len(parts_of(w[0])), w[1])):
            if path == "/" or any(ch in path for ch in ":,\n"):
                raise TaskError(f"cannot mount {path!r}: / or a path with ':', ',' or newline")
            if not any(under(path, c) and (read_only or not ro) for c, ro in chosen):
                chosen.append((path, read_only))
        return chosen

    def docker_argv(self, index: int, executor: dict[str, Any], name: str) -> list[str]:
        image, argv, rt = executor["image"], executor["command"], self.rt
        if image.startswith("-"):
            raise TaskError(f"executors[{index}].image: may not start with '-'")
        cmd = self.cli + ["run", "--rm", "--name", name, "--user", self.user]
        cmd += ["--security-opt", "no-new-privileges", "--cap-drop", "ALL"]
        cmd += [] if rt.get("network") else ["--network", "none"]
        cmd += ["--cpus", str(rt["cpus"])] if rt.get("cpus") else []
        memory = f"{int(rt['memory_mb'])}m" if rt.get("memory_mb") else ""
        cmd += ["--memory", memory, "--memory-swap", memory] if memory else []
        for path, read_only in self.mounts():
            cmd += ["-v", f"{self.root}{path}:{path}" + (":ro" if read_only else "")]
        cmd += ["-i"] if executor.get("stdin") else []
        cmd += ["-w", executor["workdir"]] if executor.get("workdir") else []
        for key, value in sorted((executor.get("env") or {}).items()):
            cmd += ["-e", f"{key}={value}"]
        cmd += list(rt.get("extra_args") or [])
        # The entrypoint is argv[0]: TES's command is an argv, whatever the image's own.
        return cmd + ["--entrypoint", argv[0], image] + list(argv[1:])

    def run_executor(self, index: int, executor: dict[str, Any]) -> int:
        """Run one executor to its end, record its log at once; its exit status."""
        argv = self.docker_argv(index, executor, name := f"{self.name}-{index}")
        fds: dict[str, int | None] = {"stdin": None, "stdout": None, "stderr": None}
        with contextlib.ExitStack() as stack:
            for key in fds:
                if executor.get(key):
                    flags = READ_FLAGS if key == "stdin" else WRITE_FLAGS
                    with step(f"executors[{index}].{key} {executor[key]}"):
                        fds[key] = fd = open_under(self.root, executor[key], flags, key != "stdin")
                        stack.callback(os.close, fd)
            workdir = clean(executor.get("workdir") or "/")
            if any(under(workdir, m) and workdir != m for m, _ in self.mounts()):
                # Else Docker makes it in the image, under the bind mount that hides it.
                os.close(open_dirs(self.root, parts_of(workdir), create=True))
            self.hand_over()
            log: dict[str, Any] = {"start_time": now()}
            proc: subprocess.Popen[bytes] | None = None
            tails: list[tuple[threading.Thread, bytearray]] = []
            try:
                stdin = subprocess.DEVNULL if fds["stdin"] is None else fds["stdin"]
                proc = subprocess.Popen(argv, stdin=stdin, stdout=-1, stderr=-1)
                tails.append(pump(proc.stdout, fds["stdout"], self.tail_bytes))
                tails.append(pump(proc.stderr, fds["stderr"], self.tail_bytes))
                code = proc.wait()
                self.record(log, code, tails)  # a cancel here still removes the container:
            except Canceled:  # the CLI may have died of the same SIGTERM, not the container
                self.remove_containers([name], proc)
                if proc and len(tails) == 2 and all(x is not log for x in self.state["logs"]):
                    self.record(log, -15 if proc.returncode is None else proc.returncode, tails)
                raise
            return code

    def record(self, log: dict[str, Any], code: int, tails: list[Any]) -> None:
        for thread, _ in tails:
            thread.join(KILL_TIMEOUT_S)
        out, err = (bytes(data).decode("utf-8", "replace") for _, data in tails)
        code = 128 - code if code < 0 else code  # a signal's number
        log.update(end_time=now(), exit_code=code, stdout=out, stderr=err)
        self.state["logs"].append(log)
        self.save()

    def remove_containers(self, names: list[str], proc: Any = None) -> list[str]:
        """Kill and remove containers by exact name (their CLI *proc* then ends; again if it
        had to be killed: it may have made one after the first removal); those there."""
        rm = self.cli + ["rm", "-f", *names]
        run = subprocess.run(rm, capture_output=True, timeout=KILL_TIMEOUT_S, check=False)
        try:
            if proc is not None:
                proc.wait(KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run(rm, capture_output=True, timeout=KILL_TIMEOUT_S, check=False)
        return run.stdout.decode("utf-8", "replace").split()

    def stage_out(self, output: dict[str, Any]) -> None:
        """One output: a path, or each wildcard match (less path_prefix, added to the URL)."""
        path, url, kind = output["path"], output["url"], output.get("type", "FILE")
        if not any(c in path for c in WILDCARDS):
            self.deliver(path, url, kind, missing_ok=False)
            return
        prefix = output.get("path_prefix") or ""
        for match in sorted(glob.glob(glob.escape(self.root) + clean(path))):
            inside = match[len(self.root) :]
            if inside.startswith(prefix):
                self.deliver(inside, url + inside[len(prefix) :], kind, missing_ok=True)

    def deliver(self, path: str, url: str, kind: str, missing_ok: bool) -> None:
        """Send container path *path* (a file, or a DIRECTORY's tree) to *url*. Only
        regular files and directories count: the container's symlinks are not followed."""
        try:
            if kind == "DIRECTORY":
                src = open_dirs(self.root, parts_of(path))
            else:
                src = open_under(self.root, path, READ_FLAGS)
        except (OSError, TaskError) as exc:
            if missing_ok:
                return
            raise TaskError(f"output {path} is missing or not a {kind.lower()}: {exc}") from exc
        with opened(src):
            if kind != "DIRECTORY":
                self.send(src, path, url)
                return
            self.send(None, path, url)
            for rel, fd in entries(src, path, None):
                with contextlib.nullcontext() if fd is None else opened(fd):
                    self.send(fd, path.rstrip("/") + rel, url.rstrip("/") + rel)

    def send(self, fd: int | None, path: str, url: str) -> None:
        """Deliver one file (file:// copy or http(s) PUT) and record its output file log;
        a directory (*fd* None) is only made, at a file:// URL."""
        size = 0 if fd is None else os.fstat(fd).st_size
        if self.check_url(url) == "file":
            base, rel = self.confine(url)
            if fd is None:
                os.close(open_dirs(base, parts_of(rel), create=True))
                return
            with opened(open_under(base, rel, WRITE_FLAGS, create_dirs=True)) as out:
                size = copy(functools.partial(os.read, fd), out)
        elif fd is None:
            return
        else:
            import urllib.request as req

            with os.fdopen(os.dup(fd), "rb") as body:
                headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
                request = req.Request(url, data=body, method="PUT", headers=headers)
                with self.opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
                    response.read()
        self.state["outputs"].append({"url": url, "path": path, "size_bytes": str(size)})
        self.save()


def main(argv: list[str]) -> int:
    """``tes_task.py PLAN_JSON``: run the plan's task; the exit status says how it ended."""
    with open(argv[1], encoding="utf-8") as plan_file:  # close-on-exec: no child gets it
        return Task(json.load(plan_file)).run()


if __name__ == "__main__":  # os._exit: no interpreter teardown (~7 ms of each task's end);
    os._exit(main(sys.argv))  # it prints nothing, so no buffer is left to flush
