"""Reading and writing files strictly inside a job's directory.

Used by the job_files API (a job's wrapper or a Pulsar-style runner fetching
inputs and posting outputs). Rules (galaxy-contract.md §6):

- the root comes from the job id on the server side; the client's path is
  absolute (Pulsar's form) or relative to the root, decoded once, never
  unquoted again;
- reads: ``realpath`` containment by path components (not a string prefix),
  final component opened with ``O_NOFOLLOW`` and checked with ``fstat``;
- writes: walk from the root component by component with ``lstat``, refusing
  any symlink or non-directory on the way, create missing directories with
  ``mkdir`` (no ``makedirs`` that follows links), write to an ``O_EXCL`` temp
  file in the checked directory and ``os.replace`` it onto the target;
- anything outside answers the same way whether it exists or not.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import IO

from jobferry.errors import NotFoundError, PathRejectedError, RequestError

#: Longest path accepted, in bytes.
MAX_PATH_BYTES = 4096
#: Files that an upload appends to instead of replacing (Galaxy's rule).
APPEND_SUFFIXES = ("tool_stdout", "tool_stderr")

OUTSIDE = "Job is not authorized to access the supplied path."


def relative_parts(root: Path, path: str) -> list[str]:
    """Split a client path into components below *root*; refuse anything else.

    Raises RequestError for an empty path or one with NUL bytes, and
    PathRejectedError for one that leaves *root*.
    """
    if not path or "\x00" in path:
        raise RequestError("Job files action requires a valid 'path'.")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise PathRejectedError(OUTSIDE)
    root_text = os.fspath(root)
    if os.path.isabs(path):
        normalized = os.path.normpath(path)
        real_root = os.path.realpath(root_text)
        for base in {root_text.rstrip(os.sep), real_root}:
            if normalized == base:
                raise PathRejectedError(OUTSIDE)
            if normalized.startswith(base + os.sep):
                rest = normalized[len(base) + 1 :]
                break
        else:
            raise PathRejectedError(OUTSIDE)
    else:
        rest = path
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise PathRejectedError(OUTSIDE)
    return parts


def open_for_read(root: Path, path: str) -> tuple[IO[bytes], int]:
    """Open a regular file inside *root* for reading; return (file, size).

    Symlinks are followed only when their target stays inside *root*.
    Raises PathRejectedError (outside), NotFoundError (missing inside),
    RequestError (not a regular file).
    """
    parts = relative_parts(root, path)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise PathRejectedError(OUTSIDE)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError("File not found.") from None
    except OSError as exc:
        raise PathRejectedError(OUTSIDE) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RequestError("Path does not refer to a file.")
    return os.fdopen(fd, "rb"), info.st_size


def checked_parent(root: Path, parts: list[str]) -> int:
    """Open (creating as needed) the directory holding *parts*' last component.

    Walks from *root* with ``openat``-style descriptors and ``O_NOFOLLOW`` so a
    symlink anywhere on the way is refused, even if swapped in concurrently.
    Returns a directory file descriptor the caller must close.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(os.path.realpath(root), flags)
    try:
        for name in parts[:-1]:
            try:
                child = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(name, 0o750, dir_fd=fd)
                child = os.open(name, flags, dir_fd=fd)
            except OSError as exc:  # ELOOP/ENOTDIR: a symlink or a file on the way
                raise PathRejectedError(OUTSIDE) from exc
            os.close(fd)
            fd = child
        try:
            info = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return fd
        if stat.S_ISLNK(info.st_mode) or stat.S_ISDIR(info.st_mode):
            raise PathRejectedError(OUTSIDE)
        return fd
    except BaseException:
        os.close(fd)
        raise


class ConfinedWriter:
    """Write one upload to a temp file beside its target; ``commit`` renames it into place.

    ``abort`` (or garbage) removes the temp file. Appends (for ``tool_stdout``/
    ``tool_stderr``) are applied at commit from the temp file.
    """

    def __init__(self, root: Path, path: str) -> None:
        self.parts = relative_parts(root, path)
        self.dir_fd = checked_parent(root, self.parts)
        self.name = self.parts[-1]
        self.tmp_name = f".{self.name[:100]}.{secrets.token_hex(6)}.upload"
        fd = os.open(
            self.tmp_name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
            dir_fd=self.dir_fd,
        )
        self.file: IO[bytes] | None = os.fdopen(fd, "wb")
        self.size = 0

    def write(self, chunk: bytes) -> None:
        assert self.file is not None
        self.file.write(chunk)
        self.size += len(chunk)

    def commit(self) -> int:
        """Put the upload in place; return its size."""
        assert self.file is not None
        self.file.close()
        self.file = None
        try:
            if self.name.endswith(APPEND_SUFFIXES) and _exists(self.name, self.dir_fd):
                self._append()
            else:
                os.replace(self.tmp_name, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        finally:
            self._cleanup()
        return self.size

    def _append(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        target = os.open(self.name, flags, dir_fd=self.dir_fd)
        source = os.open(self.tmp_name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        try:
            while chunk := os.read(source, 1 << 20):
                os.write(target, chunk)
        finally:
            os.close(source)
            os.close(target)

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self.dir_fd < 0:
            return
        try:
            os.unlink(self.tmp_name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        os.close(self.dir_fd)
        self.dir_fd = -1


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
