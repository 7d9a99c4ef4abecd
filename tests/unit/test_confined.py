"""Confined reads and writes inside a job directory (jobferry.staging.confined)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobferry.errors import NotFoundError, PathRejectedError, RequestError
from jobferry.staging.confined import (
    ConfinedWriter,
    checked_parent,
    locate_file,
    open_for_read,
    relative_parts,
    write_parts,
)

pytestmark = [pytest.mark.timeout(30), pytest.mark.engine_independent]

SECRET = b"TOP-SECRET-OUTSIDE"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A job directory ``jobs/ab/abc`` with inputs, work, stdout, and secrets around it."""
    job = tmp_path / "jobs" / "ab" / "abc"
    (job / "inputs" / "0").mkdir(parents=True)
    (job / "work").mkdir()
    (job / "inputs" / "0" / "in.txt").write_bytes(b"input data")
    (job / "stdout").write_bytes(b"out\n")
    sibling = tmp_path / "jobs" / "ab" / "abc_evil"
    sibling.mkdir()
    (sibling / "secret").write_bytes(SECRET)
    (tmp_path / "secret").write_bytes(SECRET)
    return job


def read(root: Path, path: str) -> bytes:
    handle, size = open_for_read(root, path)
    with handle:
        data = handle.read()
    assert len(data) == size
    return data


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".upload"))


# --- relative_parts --------------------------------------------------------------------------


def test_relative_parts__accepts_relative_and_absolute_paths_inside(root: Path) -> None:
    assert relative_parts(root, "work/a/b.txt") == ["work", "a", "b.txt"]
    assert relative_parts(root, "./work//b.txt") == ["work", "b.txt"]
    assert relative_parts(root, f"{root}/work/b.txt") == ["work", "b.txt"]
    assert relative_parts(root, f"{os.path.realpath(root)}/stdout") == ["stdout"]


@pytest.mark.parametrize("path", ["", "a\x00b", "work/\x00"])
def test_relative_parts__empty_or_nul_is_a_request_error(root: Path, path: str) -> None:
    with pytest.raises(RequestError):
        relative_parts(root, path)


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "work/../../secret",
        "work/..",
        ".",
        "/",
        "/etc/passwd",
        "{root}",
        "{root}/",
        "{root}/../abc_evil/secret",
        "{root}_evil/secret",
        "{root}/work/../stdout",  # `..` is refused even where it would stay inside
        "x" * 5000,
        "work/" + "n" * 256,
    ],
)
def test_relative_parts__leaving_the_root_is_refused(root: Path, path: str) -> None:
    with pytest.raises(PathRejectedError):
        relative_parts(root, path.format(root=root))


def test_relative_parts__percent_forms_are_names_not_decoded(root: Path) -> None:
    assert relative_parts(root, "%2e%2e%2fsecret") == ["%2e%2e%2fsecret"]


def test_write_parts__only_inside_the_area(root: Path) -> None:
    assert write_parts(root, "work/x", "work") == ["work", "x"]
    for path in ("stdout", "inputs/0/in.txt", "work", f"{root}/x", "workx/y"):
        with pytest.raises(PathRejectedError):
            write_parts(root, path, "work")


# --- reading -------------------------------------------------------------------------------


def test_open_for_read__reads_files_anywhere_inside(root: Path) -> None:
    assert read(root, "inputs/0/in.txt") == b"input data"
    assert read(root, f"{root}/stdout") == b"out\n"


def test_open_for_read__missing_inside_is_not_found(root: Path) -> None:
    with pytest.raises(NotFoundError):
        read(root, "work/nothing")
    with pytest.raises(NotFoundError):
        read(root, "nodir/nothing")


def test_open_for_read__a_directory_is_not_a_file(root: Path) -> None:
    with pytest.raises(RequestError, match="not refer to a file"):
        read(root, "work")


def test_open_for_read__a_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "work" / "pipe")
    with pytest.raises(RequestError, match="not refer to a file"):
        read(root, "work/pipe")


def test_open_for_read__symlink_inside_to_inside_is_followed(root: Path) -> None:
    (root / "work" / "link").symlink_to(root / "stdout")
    assert read(root, "work/link") == b"out\n"


@pytest.mark.parametrize("target", ["{tmp}/secret", "{tmp}/missing", "/etc/passwd", "../.."])
def test_open_for_read__symlink_leaving_the_root_is_refused(
    root: Path, tmp_path: Path, target: str
) -> None:
    (root / "work" / "link").symlink_to(target.format(tmp=tmp_path))
    with pytest.raises(PathRejectedError):
        read(root, "work/link")


def test_open_for_read__symlinked_directory_leaving_the_root_is_refused(
    root: Path, tmp_path: Path
) -> None:
    (root / "work" / "up").symlink_to(tmp_path)
    with pytest.raises(PathRejectedError):
        read(root, "work/up/secret")
    with pytest.raises(PathRejectedError):
        read(root, "work/up/no-such-file")


def test_locate_file__gives_the_real_path_of_a_file_inside(root: Path) -> None:
    (root / "work" / "link").symlink_to(root / "stdout")
    assert locate_file(root, "work/link") == Path(os.path.realpath(root / "stdout"))
    assert locate_file(root, "inputs/0/in.txt").read_bytes() == b"input data"


def test_locate_file__refuses_as_open_for_read_does(root: Path, tmp_path: Path) -> None:
    (root / "work" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(PathRejectedError):
        locate_file(root, "work/link")
    with pytest.raises(PathRejectedError):
        locate_file(root, "../abc_evil/secret")
    with pytest.raises(NotFoundError):
        locate_file(root, "work/missing")
    with pytest.raises(RequestError):
        locate_file(root, "work")


# --- writing -------------------------------------------------------------------------------


def test_writer__creates_directories_and_renames_into_place(root: Path) -> None:
    writer = ConfinedWriter(root, "work/a/b/out.txt", area="work")
    writer.write(b"hello ")
    writer.write(b"world")
    assert not (root / "work" / "a" / "b" / "out.txt").exists()
    assert writer.commit() == 11
    assert (root / "work" / "a" / "b" / "out.txt").read_bytes() == b"hello world"
    assert leftovers(root) == []


def test_writer__replaces_an_existing_file(root: Path) -> None:
    (root / "work" / "out").write_bytes(b"old content")
    writer = ConfinedWriter(root, f"{root}/work/out", area="work")
    writer.write(b"new")
    writer.commit()
    assert (root / "work" / "out").read_bytes() == b"new"


@pytest.mark.parametrize("name", ["tool_stdout", "x.tool_stderr"])
def test_writer__appends_to_tool_stdout_and_stderr(root: Path, name: str) -> None:
    for part in (b"one\n", b"two\n"):
        writer = ConfinedWriter(root, f"work/{name}", area="work")
        writer.write(part)
        writer.commit()
    assert (root / "work" / name).read_bytes() == b"one\ntwo\n"
    assert leftovers(root) == []


def test_writer__abort_leaves_nothing_not_even_new_directories(root: Path) -> None:
    writer = ConfinedWriter(root, "work/new/deeper/out", area="work")
    writer.write(b"partial")
    writer.abort()
    writer.abort()  # idempotent
    assert list((root / "work").iterdir()) == []


def test_writer__abort_keeps_directories_that_got_other_files(root: Path) -> None:
    writer = ConfinedWriter(root, "work/new/out", area="work")
    (root / "work" / "new" / "other").write_bytes(b"x")
    writer.abort()
    assert [p.name for p in (root / "work" / "new").iterdir()] == ["other"]


def test_writer__through_a_symlinked_directory_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "work" / "linkdir").symlink_to(outside)
    with pytest.raises(PathRejectedError):
        ConfinedWriter(root, "work/linkdir/x", area="work")
    with pytest.raises(PathRejectedError):
        ConfinedWriter(root, "work/linkdir/sub/x", area="work")
    assert list(outside.iterdir()) == []


def test_writer__onto_a_symlink_or_directory_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "work" / "link").symlink_to(tmp_path / "secret")
    (root / "work" / "dir").mkdir()
    for path in ("work/link", "work/dir"):
        with pytest.raises(PathRejectedError):
            ConfinedWriter(root, path, area="work")
    assert (tmp_path / "secret").read_bytes() == SECRET
    assert leftovers(root) == []


def test_writer__a_file_on_the_way_is_refused(root: Path) -> None:
    (root / "work" / "file").write_bytes(b"x")
    with pytest.raises(PathRejectedError):
        ConfinedWriter(root, "work/file/x", area="work")


@pytest.mark.parametrize("path", ["stdout", "inputs/0/in.txt", "../abc_evil/x", "/etc/x"])
def test_writer__outside_the_area_is_refused_before_anything_is_made(root: Path, path: str) -> None:
    before = sorted(root.rglob("*"))
    with pytest.raises(PathRejectedError, match="write"):
        ConfinedWriter(root, path, area="work")
    assert sorted(root.rglob("*")) == before


def test_writer__symlink_swapped_in_after_the_check_is_replaced_not_written_through(
    root: Path, tmp_path: Path
) -> None:
    writer = ConfinedWriter(root, "work/out", area="work")
    writer.write(b"upload")
    (root / "work" / "out").symlink_to(tmp_path / "secret")
    writer.commit()
    assert (tmp_path / "secret").read_bytes() == SECRET
    assert not (root / "work" / "out").is_symlink()
    assert (root / "work" / "out").read_bytes() == b"upload"


def test_writer__append_target_swapped_for_a_symlink_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "work" / "tool_stdout").write_bytes(b"one\n")
    writer = ConfinedWriter(root, "work/tool_stdout", area="work")
    writer.write(b"two\n")
    (root / "work" / "tool_stdout").unlink()
    (root / "work" / "tool_stdout").symlink_to(tmp_path / "secret")
    with pytest.raises(PathRejectedError):
        writer.commit()
    assert (tmp_path / "secret").read_bytes() == SECRET
    assert leftovers(root) == []


def test_staged_writer__target_named_at_commit(root: Path) -> None:
    writer = ConfinedWriter(root, None, area="work", staging_dir=root)
    writer.write(b"staged")
    assert len(leftovers(root)) == 1
    writer.commit("work/late/name.txt")
    assert (root / "work" / "late" / "name.txt").read_bytes() == b"staged"
    assert leftovers(root) == []


def test_staged_writer__from_another_directory_with_the_root_given_at_commit(
    root: Path, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    writer = ConfinedWriter(staging, None, area="work", staging_dir=staging)
    writer.write(b"data")
    writer.commit(f"{root}/work/x", root=root)
    assert (root / "work" / "x").read_bytes() == b"data"
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("path", ["stdout", "work/../stdout", "/etc/passwd", None])
def test_staged_writer__bad_target_at_commit_leaves_nothing(root: Path, path: str | None) -> None:
    before = sorted(root.rglob("*"))
    writer = ConfinedWriter(root, None, area="work", staging_dir=root)
    writer.write(b"data")
    with pytest.raises((PathRejectedError, RequestError)):
        writer.commit(path)
    assert sorted(root.rglob("*")) == before
    assert (root / "stdout").read_bytes() == b"out\n"


def test_checked_parent__reports_what_it_created(root: Path) -> None:
    fd, created = checked_parent(root, ["work", "a", "b", "f"])
    os.close(fd)
    assert created == [1, 2]
    fd, created = checked_parent(root, ["work", "a", "b", "f"])
    os.close(fd)
    assert created == []


def test_writer__a_vanished_job_directory_is_not_found(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    with pytest.raises(NotFoundError):
        ConfinedWriter(gone, "work/x", area="work")
    with pytest.raises(NotFoundError):
        ConfinedWriter(gone, None, area="work", staging_dir=gone)
    with pytest.raises(NotFoundError):
        open_for_read(gone, "stdout")


def test_writer_with_a_staging_dir__the_partial_never_sits_in_the_root(
    root: Path, tmp_path: Path
) -> None:
    """Guards issue #10 item 4: a kill -9 mid-upload left ``work/.NAME.<random>.upload``
    in the job's directory forever; the partial now lives in the staging area."""
    staging = tmp_path / "staging"
    staging.mkdir()
    writer = ConfinedWriter(root, "work/a/out.bin", area="work", staging_dir=staging)
    writer.write(b"partial")
    assert leftovers(root) == [] and len(list(staging.iterdir())) == 1
    assert (root / "work" / "a").is_dir()  # the target was checked (and made) up front
    assert writer.commit() == 7
    assert (root / "work" / "a" / "out.bin").read_bytes() == b"partial"
    assert list(staging.iterdir()) == [] and leftovers(root) == []
    aborted = ConfinedWriter(root, "work/b/out.bin", area="work", staging_dir=staging)
    aborted.write(b"partial")
    aborted.abort()
    assert list(staging.iterdir()) == [] and not (root / "work" / "b").exists()
