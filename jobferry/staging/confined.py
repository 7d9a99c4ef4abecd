"""Path confinement: every client-named path goes through here.

Reading and writing files strictly inside a job's directory: the job_files API
(a job's wrapper or a Pulsar-style runner fetching inputs and posting outputs)
reads with ``open_for_read`` and writes with ``ConfinedWriter``; downloads of a
job's recorded files (Wooey assets, Galaxy datasets) find them with
``locate_file``. Pure name checks that open nothing (``safe_filename``) live in
``jobferry.staging.paths``. Rules (galaxy-contract.md §6):

- the root comes from the job id on the server side; the client's path is
  absolute (Pulsar's form) or relative to the root, decoded once by the caller,
  never unquoted again; a ``..`` component is refused in either form (no
  lexical normalisation that the kernel would resolve differently);
- an absolute path is matched against the root component by component (never
  a string prefix: ``/jobs/ab`` does not contain ``/jobs/ab_evil``);
- reads: ``realpath`` containment, then the resolved path is opened component
  by component below the root with ``O_NOFOLLOW`` (a symlink swapped in after
  the check is refused, not followed), ``O_NONBLOCK`` (a FIFO cannot hang a
  worker thread) and checked with ``fstat`` to be a regular file;
- writes: walk from the root component by component with ``O_NOFOLLOW``
  directory descriptors, refusing any symlink or non-directory on the way,
  create missing directories with ``mkdir`` (no ``makedirs`` that follows
  links), write to an ``O_EXCL`` temp file and ``os.replace`` it onto the
  target (a rename replaces a link instead of writing through it); optionally
  only below one top-level directory (the *area*, e.g. ``work``);
- anything outside answers the same way (PathRejectedError) whether it exists
  or not; errors never name the resolved path.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import IO

from jobferry.errors import NotFoundError, PathRejectedError, RequestError

#: Longest path accepted, in bytes.
MAX_PATH_BYTES = 4096
#: Longest single path component accepted, in bytes (NAME_MAX).
MAX_NAME_BYTES = 255
#: Files that an upload appends to instead of replacing (Galaxy's rule).
APPEND_SUFFIXES = ("tool_stdout", "tool_stderr")
#: Bytes copied at a time when appending or copying across filesystems.
COPY_CHUNK = 1 << 20

OUTSIDE = "Job is not authorized to access the supplied path."
OUTSIDE_WRITE = "Job is not authorized to write to supplied path."
MISSING_PATH = "Job files action requires a valid 'path'."

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def relative_parts(root: Path, path: str) -> list[str]:
    """Split a client path into components below *root*; refuse anything else.

    Raises RequestError for an empty path or one with NUL bytes, and
    PathRejectedError for one that leaves *root*, names *root* itself, has a
    ``..`` component, or is too long.
    """
    if not path or "\x00" in path:
        raise RequestError(MISSING_PATH)
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise PathRejectedError(OUTSIDE)
    parts = _components(path)
    if any(p == ".." or len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for p in parts):
        raise PathRejectedError(OUTSIDE)
    if os.path.isabs(path):
        root_text = os.fspath(root)
        for base in (root_text, os.path.realpath(root_text)):
            base_parts = _components(base)
            if parts[: len(base_parts)] == base_parts:
                parts = parts[len(base_parts) :]
                break
        else:
            raise PathRejectedError(OUTSIDE)
    if not parts:
        raise PathRejectedError(OUTSIDE)
    return parts


def write_parts(
    root: Path, path: str, area: str | None = None, top_level_files: frozenset[str] = frozenset()
) -> list[str]:
    """``relative_parts`` for a write: with *area*, only below ``root/area/`` or to
    one of the files at the top of *root* named in *top_level_files*."""
    try:
        parts = relative_parts(root, path)
    except PathRejectedError:
        raise PathRejectedError(OUTSIDE_WRITE) from None
    if area is not None and (len(parts) < 2 or parts[0] != area):
        if not (len(parts) == 1 and parts[0] in top_level_files):
            raise PathRejectedError(OUTSIDE_WRITE)
    return parts


def open_for_read(root: Path, path: str) -> tuple[IO[bytes], int]:
    """Open a regular file inside *root* for reading; return (file, size).

    Symlinks are followed only when their target stays inside *root*.
    Raises PathRejectedError (outside), NotFoundError (missing inside),
    RequestError (not a regular file).
    """
    handle, size, _ = _open_regular(root, path)
    return handle, size


def locate_file(root: Path, path: str) -> Path:
    """The real path of a regular file inside *root*, checked as ``open_for_read`` does.

    For handlers that serve a file by name (Tornado's StaticFileHandler): the
    file is opened component by component below *root* and ``fstat``-ed, then
    closed. Raises as ``open_for_read``.
    """
    handle, _, real = _open_regular(root, path)
    handle.close()
    return Path(real)


def _open_regular(root: Path, path: str) -> tuple[IO[bytes], int, str]:
    parts = relative_parts(root, path)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if real == real_root:
        raise RequestError("Path does not refer to a file.")
    if os.path.commonpath([real_root, real]) != real_root:
        raise PathRejectedError(OUTSIDE)
    inner = _components(os.path.relpath(real, real_root))
    fd = _open_beneath(real_root, inner)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RequestError("Path does not refer to a file.")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size, real
    except BaseException:
        os.close(fd)
        raise


def _open_beneath(real_root: str, parts: list[str]) -> int:
    """Open ``real_root/parts`` read-only without following any symlink on the way.

    *parts* come from a resolved path, so a symlink met here was swapped in
    after the check: it is refused. A FIFO or device is opened non-blocking
    (the caller refuses it after ``fstat``).
    """
    try:
        fd = os.open(real_root, _DIR_FLAGS)
    except FileNotFoundError:
        raise NotFoundError("File not found.") from None
    try:
        for name in parts[:-1]:
            child = _open_child(name, _DIR_FLAGS, fd)
            os.close(fd)
            fd = child
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        return _open_child(parts[-1], flags, fd)
    finally:
        os.close(fd)


def _open_child(name: str, flags: int, dir_fd: int) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise NotFoundError("File not found.") from None
    except OSError as exc:  # ELOOP (a symlink), ENOTDIR, EACCES: refused, never followed
        raise PathRejectedError(OUTSIDE) from exc


def checked_parent(root: Path, parts: list[str]) -> tuple[int, list[int]]:
    """Open (creating as needed) the directory holding *parts*' last component.

    Walks from *root* with directory descriptors and ``O_NOFOLLOW`` so a
    symlink anywhere on the way is refused, even if swapped in concurrently.
    Refuses a last component that is a symlink or a directory.

    Returns the directory's descriptor (the caller must close it) and the
    indexes in *parts* of the directories this call created.
    """
    try:
        fd = os.open(os.path.realpath(root), _DIR_FLAGS)
    except FileNotFoundError:
        raise NotFoundError("The job's directory no longer exists.") from None
    created: list[int] = []
    try:
        for index, name in enumerate(parts[:-1]):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o750, dir_fd=fd)
                    created.append(index)
                except FileExistsError:
                    pass  # made concurrently: opened (and checked) below
                child = _open_dir(name, fd)
            except OSError as exc:  # ELOOP/ENOTDIR: a symlink or a file on the way
                raise PathRejectedError(OUTSIDE_WRITE) from exc
            os.close(fd)
            fd = child
        try:
            info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return fd, created
        if stat.S_ISLNK(info.st_mode) or stat.S_ISDIR(info.st_mode):
            raise PathRejectedError(OUTSIDE_WRITE)
        return fd, created
    except BaseException:
        os.close(fd)
        if created:
            _remove_empty_dirs(root, parts, created)
        raise


def _open_dir(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise PathRejectedError(OUTSIDE_WRITE) from exc


def _remove_empty_dirs(root: Path, parts: list[str], created: list[int]) -> None:
    """Remove the directories a refused or aborted write created (deepest first, if empty)."""
    for index in sorted(created, reverse=True):
        try:
            fd = os.open(os.path.realpath(root), _DIR_FLAGS)
        except OSError:
            return
        try:
            for name in parts[:index]:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
            os.rmdir(parts[index], dir_fd=fd)
        except OSError:
            pass  # not empty (someone else wrote there) or gone: leave it
        finally:
            os.close(fd)


class ConfinedWriter:
    """Write one upload to a temp file; ``commit`` moves it onto its target.

    With *path*, the target is checked (and its missing parent directories
    made) at once, so a refused path is refused before any byte is read.
    Without it (the target only becomes known after the body), ``commit(path)``
    checks the target then.

    The temp file lies in *staging_dir* when given: the daemon passes its own
    staging area (``<data_dir>/tmp/uploads``), which start-up empties, so an
    upload cut off by a crash (kill -9, power loss) is never left half-written
    in a job's directory, where nothing would ever remove it and where output
    collection looks. Without *staging_dir* the temp file lies beside the target
    (a writer given no *path* then needs *staging_dir*). On the same filesystem
    ``commit()`` is one rename; across filesystems the temp file is first copied
    beside the target under a ``.NAME.<random>.upload`` name (which output
    collection skips), then renamed.

    ``abort`` removes the temp file and any directory this writer created;
    whatever fails (a write, a flush on a full disk, a refused target), nothing
    half-written stays. Appends (for ``tool_stdout``/``tool_stderr``) are
    applied at commit from the temp file. Not thread-safe: one thread at a time.
    """

    def __init__(
        self,
        root: Path,
        path: str | None = None,
        *,
        area: str | None = None,
        top_level_files: frozenset[str] = frozenset(),
        staging_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.area = area
        self.top_level_files = top_level_files
        self.parts: list[str] = []
        self.created: list[int] = []
        self.size = 0
        self.staged = path is None
        #: The directory holding the target (opened when *path* was given), else -1.
        self.dest_fd = -1
        #: The directory holding the temp file.
        self.dir_fd = -1
        if path is not None:
            self.parts = write_parts(root, path, area, top_level_files)
            self.dest_fd, self.created = checked_parent(root, self.parts)
            hint = self.parts[-1][:100]
        else:
            hint = "staged"
        try:
            if staging_dir is None and self.dest_fd >= 0:
                self.dir_fd = os.dup(self.dest_fd)
            else:
                try:
                    self.dir_fd = os.open(staging_dir or root, _DIR_FLAGS)
                except FileNotFoundError:
                    raise NotFoundError("The job's directory no longer exists.") from None
            self.tmp_name = f".{hint}.{secrets.token_hex(6)}.upload"
            fd = os.open(
                self.tmp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
                dir_fd=self.dir_fd,
            )
        except BaseException:
            self._close_dirs(remove_created=True)
            raise
        self.file: IO[bytes] | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        assert self.file is not None
        self.file.write(chunk)
        self.size += len(chunk)

    def commit(self, path: str | None = None, *, root: Path | None = None) -> int:
        """Put the upload in place; return its size.

        A staged writer needs *path*, and takes *root* if it was only known
        after the upload began. Whatever happens, the temp file is gone afterwards.
        """
        assert self.file is not None, "commit after commit or abort"
        if root is not None:
            assert self.staged, "only a staged writer can change its root"
            self.root = root
        try:
            file, self.file = self.file, None
            file.close()  # flushes: may fail (ENOSPC) like any write
            if self.staged:
                if path is None:
                    raise RequestError(MISSING_PATH)
                self.parts = write_parts(self.root, path, self.area, self.top_level_files)
                self.dest_fd, self.created = checked_parent(self.root, self.parts)
            self._move()
        except BaseException:
            self._cleanup(remove_created=True)
            raise
        self._cleanup(remove_created=False)
        return self.size

    def abort(self) -> None:
        """Drop the upload (idempotent), even if closing the file fails."""
        try:
            if self.file is not None:
                file, self.file = self.file, None
                file.close()
        except OSError:
            pass  # a flush on a full disk: the file is removed below all the same
        finally:
            self._cleanup(remove_created=True)

    # --- internals ------------------------------------------------------------------------

    def _move(self) -> None:
        """Rename the temp file onto the target (copying first across filesystems)."""
        try:
            self._place(self.dir_fd, self.dest_fd, self.tmp_name)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another filesystem: copy beside the target first, then rename there.
            local = f".{self.parts[-1][:100]}.{secrets.token_hex(6)}.upload"
            try:
                _copy_at(self.dir_fd, self.tmp_name, self.dest_fd, local)
                self._place(self.dest_fd, self.dest_fd, local)
            finally:
                _unlink_at(local, self.dest_fd)

    def _place(self, src_fd: int, dest_fd: int, src_name: str) -> None:
        name = self.parts[-1]
        if name.endswith(APPEND_SUFFIXES) and _exists(name, dest_fd):
            _append_at(src_fd, src_name, dest_fd, name)
            return
        try:
            os.replace(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
        except (IsADirectoryError, NotADirectoryError) as exc:  # a directory swapped in
            raise PathRejectedError(OUTSIDE_WRITE) from exc

    def _cleanup(self, *, remove_created: bool) -> None:
        if self.dir_fd >= 0:
            _unlink_at(self.tmp_name, self.dir_fd)
        self._close_dirs(remove_created=remove_created)

    def _close_dirs(self, *, remove_created: bool) -> None:
        for fd in (self.dir_fd, self.dest_fd):
            if fd >= 0:
                os.close(fd)
        self.dir_fd = self.dest_fd = -1
        if remove_created and self.created:
            _remove_empty_dirs(self.root, self.parts, self.created)
            self.created = []


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _unlink_at(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _append_at(src_fd: int, src_name: str, dest_fd: int, name: str) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        target = os.open(name, flags, dir_fd=dest_fd)
    except OSError as exc:  # ELOOP: a symlink swapped in
        raise PathRejectedError(OUTSIDE_WRITE) from exc
    try:
        if not stat.S_ISREG(os.fstat(target).st_mode):
            raise PathRejectedError(OUTSIDE_WRITE)
        os.set_blocking(target, True)
        with (
            os.fdopen(os.open(src_name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=src_fd), "rb") as src,
            os.fdopen(target, "ab", closefd=False) as dst,
        ):
            shutil.copyfileobj(src, dst, COPY_CHUNK)
    finally:
        os.close(target)


def _copy_at(src_fd: int, src_name: str, dest_fd: int, dest_name: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with (
        os.fdopen(os.open(src_name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=src_fd), "rb") as src,
        os.fdopen(os.open(dest_name, flags, 0o640, dir_fd=dest_fd), "wb") as dst,
    ):
        shutil.copyfileobj(src, dst, COPY_CHUNK)
