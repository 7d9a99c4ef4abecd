"""job_files reads through a real daemon: GET/HEAD/Range, the job_key gate, and a corpus of
confinement attacks (reads and writes) that must leak nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.e2e.job_files.support import (
    INPUT_TEXT,
    INVALID_KEY,
    SECRET,
    JobRef,
    start_job,
    temp_files,
)
from tests.helpers import Client, DaemonProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def other_job(daemon: DaemonProcess, admin: Client) -> Iterator[JobRef]:
    ref = start_job(daemon, admin)
    try:
        yield ref
    finally:
        daemon.cli("job", "cancel", ref.id, check=False)


@pytest.fixture(scope="module")
def outside(daemon: DaemonProcess, job: JobRef) -> Path:
    """A directory outside every job holding a secret, and a prefix-sibling of the job's dir."""
    directory = daemon.data_dir.parent / "outside"
    directory.mkdir(exist_ok=True)
    (directory / "secret").write_bytes(SECRET)
    sibling = Path(f"{job.dir}_evil")
    sibling.mkdir(exist_ok=True)
    (sibling / "secret").write_bytes(SECRET)
    return directory


# --- GET / HEAD -------------------------------------------------------------------------------


def test_get__serves_an_input_file_by_relative_and_absolute_path(job: JobRef) -> None:
    relative = job.get("inputs/0/input.txt")
    assert relative.status_code == 200, relative.text
    assert relative.content == INPUT_TEXT
    assert relative.headers["Content-Type"] == "application/octet-stream"
    assert relative.headers["Accept-Ranges"] == "bytes"
    assert relative.headers["Content-Length"] == str(len(INPUT_TEXT))
    absolute = job.get(f"{job.dir}/inputs/0/input.txt", params={"file_type": "input"})
    assert absolute.status_code == 200 and absolute.content == INPUT_TEXT


def test_get__serves_the_jobs_stdout(job: JobRef) -> None:
    response = job.get(f"{job.dir}/stdout")
    assert response.status_code == 200
    assert response.content.startswith(b"pid ") and b"sleeping 90" in response.content


def test_get__trailing_slash_route_works_too(job: JobRef) -> None:
    response = requests.get(
        job.url + "/", params={"job_key": job.key, "path": "stdout"}, timeout=60
    )
    assert response.status_code == 200


def test_head__gives_status_and_length_without_a_body(job: JobRef) -> None:
    params = {"job_key": job.key, "path": "inputs/0/input.txt"}
    response = requests.head(job.url, params=params, timeout=60)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(INPUT_TEXT))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.content == b""
    missing = requests.head(job.url, params={**params, "path": "work/none"}, timeout=60)
    assert missing.status_code == 404 and missing.content == b""


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=5-", 5, None),
        ("bytes=-7", -7, None),
        ("bytes=10-99999", 10, None),
    ],
)
def test_get__range_gives_206_and_the_slice(
    job: JobRef, header: str, start: int, end: int | None
) -> None:
    response = job.get("inputs/0/input.txt", headers={"Range": header})
    assert response.status_code == 206
    size = len(INPUT_TEXT)
    expected = INPUT_TEXT[start : None if end is None else end + 1]
    assert response.content == expected
    first = start % size
    assert response.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{size}"
    assert response.headers["Content-Length"] == str(len(expected))


def test_head__with_a_range_gives_the_slices_length(job: JobRef) -> None:
    params = {"job_key": job.key, "path": "inputs/0/input.txt"}
    response = requests.head(job.url, params=params, headers={"Range": "bytes=100-"}, timeout=60)
    assert response.status_code == 206
    assert response.headers["Content-Length"] == str(len(INPUT_TEXT) - 100)
    assert response.content == b""


@pytest.mark.parametrize("header", ["bytes=260-", "bytes=9999-10000", "bytes=-0"])
def test_get__unsatisfiable_range_is_416_with_the_size(job: JobRef, header: str) -> None:
    response = job.get("inputs/0/input.txt", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(INPUT_TEXT)}"
    assert response.json()["err_code"] == 416001


@pytest.mark.parametrize("header", ["bytes=0-1,4-5", "items=0-3", "bytes=abc", "bytes=9-3"])
def test_get__multi_or_malformed_range_serves_the_whole_file(job: JobRef, header: str) -> None:
    response = job.get("inputs/0/input.txt", headers={"Range": header})
    assert response.status_code == 200 and response.content == INPUT_TEXT


def test_get__errors_for_missing_files_and_directories(job: JobRef) -> None:
    missing = job.get("work/no-such-file")
    assert (missing.status_code, missing.json()["err_code"]) == (404, 404001)
    directory = job.get("work")
    assert (directory.status_code, directory.json()["err_code"]) == (400, 400008)
    assert directory.json()["err_msg"] == "Path does not refer to a file."


@pytest.mark.parametrize("job_id", ["not-an-id", "ABCDEF0123456789", "12"])
def test_malformed_job_id__is_400009(daemon: DaemonProcess, job: JobRef, job_id: str) -> None:
    url = f"{daemon.url}/api/jobs/{job_id}/files"
    for response in (
        requests.get(url, params={"job_key": job.key, "path": "stdout"}, timeout=60),
        requests.post(url, params={"job_key": job.key}, files={"file": b"x"}, timeout=60),
    ):
        assert response.status_code == 400
        assert response.json()["err_code"] == 400009


def test_get__missing_path_is_400(job: JobRef) -> None:
    response = requests.get(job.url, params={"job_key": job.key}, timeout=60)
    assert response.status_code == 400
    assert "path" in response.json()["err_msg"]
    assert response.json()["err_code"] == 400005


# --- authorisation ----------------------------------------------------------------------------


def no_leak(response: requests.Response) -> requests.Response:
    assert SECRET not in response.content
    return response


def test_wrong_key__is_403_whether_or_not_the_job_exists(
    daemon: DaemonProcess, job: JobRef, other_job: JobRef
) -> None:
    for job_id in (job.id, "0123456789abcdef"):
        url = f"{daemon.url}/api/jobs/{job_id}/files"
        for key in ("0" * 64, other_job.key, job.key[:-1], "ünïcode"):
            response = no_leak(requests.get(url, params={"job_key": key, "path": "stdout"}))
            assert response.status_code == 403, (job_id, key)
            assert response.json() == {
                "error": "permission_denied",
                "message": INVALID_KEY,
                "err_msg": INVALID_KEY,
                "err_code": 403002,
            }
            posted = no_leak(
                requests.post(url, params={"job_key": key, "path": "work/x"}, files={"file": b"x"})
            )
            assert posted.status_code == 403 and posted.json()["err_msg"] == INVALID_KEY
            in_form = requests.post(
                url, data={"job_key": key, "path": "work/x"}, files={"file": ("f", b"x")}
            )
            assert in_form.status_code == 403 and in_form.json()["err_msg"] == INVALID_KEY
    assert not (job.dir / "work" / "x").exists()
    assert temp_files(job.dir) == [] and not [
        p for p in (job.dir.parents[2] / "tmp").rglob("*") if p.is_file()
    ]


def test_own_key_with_a_path_into_another_job_is_403(job: JobRef, other_job: JobRef) -> None:
    (job.dir / "work" / "mine.txt").write_bytes(SECRET)
    response = no_leak(other_job.get(f"{job.dir}/work/mine.txt"))
    assert response.status_code == 403
    assert no_leak(other_job.get(f"../../{job.id[:2]}/{job.id}/work/mine.txt")).status_code == 403
    written = other_job.post(f"{job.dir}/work/mine.txt", b"overwrite")
    assert written.status_code == 403
    assert (job.dir / "work" / "mine.txt").read_bytes() == SECRET


@pytest.mark.parametrize(
    "how",
    ["bearer", "x-api-key", "query-key", "as-job-key", "missing"],
)
def test_user_api_keys_never_open_job_files(daemon: DaemonProcess, job: JobRef, how: str) -> None:
    key = daemon.admin_key
    headers: dict[str, str] = {}
    params = {"path": "stdout"}
    if how == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    elif how == "x-api-key":
        headers["x-api-key"] = key
    elif how == "query-key":
        params["key"] = key
    elif how == "as-job-key":
        params["job_key"] = key
    statuses = set()
    for job_id in (job.id, "0123456789abcdef"):
        url = f"{daemon.url}/api/jobs/{job_id}/files"
        response = no_leak(requests.get(url, params=params, headers=headers, timeout=60))
        assert b"pid " not in response.content
        statuses.add(response.status_code)
    assert statuses == ({403} if how == "as-job-key" else {400})


def _attack_paths(job: JobRef, outside: Path) -> list[tuple[str, str, str, int]]:
    """(name, path to an existing secret, same path to nothing, expected status)."""
    sibling = f"{job.dir}_evil"
    rel_sibling = f"../{job.id}_evil"
    encoded = "%2e%2e%2f%2e%2e%2f"
    pad = "./" * 2500
    return [
        ("dotdot", f"{rel_sibling}/secret", f"{rel_sibling}/nothing", 403),
        ("dotdot-deep", "work/../../../../outside/secret", "work/../../../../outside/none", 403),
        ("dotdot-abs", f"{job.dir}/../{job.id}_evil/secret", f"{job.dir}/../x/none", 403),
        ("abs-elsewhere", str(outside / "secret"), str(outside / "nothing"), 403),
        ("etc-passwd", "/etc/passwd", "/etc/no-such-file-here", 403),
        ("prefix-sibling", f"{sibling}/secret", f"{sibling}/nothing", 403),
        ("double-encoded", f"{encoded}{job.id}_evil%2fsecret", f"{encoded}x%2fnothing", 404),
        ("overlong", pad + str(outside / "secret"), pad + str(outside / "nothing"), 403),
        ("overlong-inside", "work/" + "a" * 5000, "work/" + "b" * 5000, 403),
        ("symlink", "work/link-to-secret", "work/link-to-nothing", 403),
        ("symlink-dir", "work/link-to-outside/secret", "work/link-to-outside/nothing", 403),
    ]


@pytest.fixture(scope="module")
def links(job: JobRef, outside: Path) -> None:
    work = job.dir / "work"
    (work / "link-to-secret").symlink_to(outside / "secret")
    (work / "link-to-nothing").symlink_to(outside / "nothing")
    (work / "link-to-outside").symlink_to(outside)


def test_read_attacks__leak_nothing_and_answer_alike_for_existing_and_missing_targets(
    job: JobRef, outside: Path, links: None
) -> None:
    for name, existing, missing, status in _attack_paths(job, outside):
        first, second = (no_leak(job.get(path)) for path in (existing, missing))
        assert (first.status_code, second.status_code) == (status, status), name
        assert first.json()["err_code"] == second.json()["err_code"], name
        head = requests.head(job.url, params={"job_key": job.key, "path": existing}, timeout=60)
        assert head.status_code == status and head.content == b"", name


@pytest.mark.parametrize(
    "raw_path",
    ["stdout%00", "stdout%00.txt", "{outside}/secret%00", "%00", "{outside}%00/secret", ""],
)
def test_nul_or_empty_path__is_400_and_leaks_nothing(
    job: JobRef, outside: Path, raw_path: str
) -> None:
    url = f"{job.url}?job_key={job.key}&path={raw_path.format(outside=quote(str(outside)))}"
    response = no_leak(requests.get(url, timeout=60))
    assert response.status_code == 400
    posted = no_leak(requests.post(url, files={"file": ("f", b"x")}, timeout=60))
    assert posted.status_code == 400


def test_double_encoded_traversal__is_never_decoded_twice(job: JobRef, outside: Path) -> None:
    # %252e%252e%252f arrives as the literal name "%2e%2e%2f...": a missing file inside.
    raw = f"%252e%252e%252f{job.id}_evil%252fsecret"
    response = no_leak(requests.get(f"{job.url}?job_key={job.key}&path={raw}", timeout=60))
    assert response.status_code == 404
    posted = requests.post(
        f"{job.url}?job_key={job.key}&path=work%2f{raw}", files={"file": b"x"}, timeout=60
    )
    assert posted.status_code == 200
    assert (job.dir / "work" / f"%2e%2e%2f{job.id}_evil%2fsecret").read_bytes() == b"x"
    assert (Path(f"{job.dir}_evil") / "secret").read_bytes() == SECRET


def test_write_attacks__are_403_and_change_nothing(job: JobRef, outside: Path, links: None) -> None:
    paths_before = sorted(outside.rglob("*"))
    before = {p: p.read_bytes() for p in paths_before if p.is_file()}
    before[Path(f"{job.dir}_evil") / "secret"] = SECRET
    stdout_before = (job.dir / "stdout").read_bytes()
    targets = [
        "stdout",
        f"{job.dir}/stdout",
        "inputs/0/input.txt",
        "inputs/new.txt",
        f"{job.dir}/new.txt",
        "work/../stdout",
        f"../{job.id}_evil/secret",
        f"{job.dir}_evil/secret",
        f"{job.dir}_evil/new",
        str(outside / "secret"),
        str(outside / "new"),
        "work/link-to-secret",
        "work/link-to-nothing",
        "work/link-to-outside/secret",
        "work/link-to-outside/new",
        "work/link-to-outside/deeper/new",
        "/etc/passwd",
        "work/" + "a" * 5000,
    ]
    for target in targets:
        response = no_leak(job.post(target, b"OVERWRITTEN"))
        assert response.status_code == 403, target
        assert response.json()["err_code"] == 403002, target
        form = requests.post(
            job.url,
            data={"job_key": job.key, "path": target},
            files={"file": ("f", b"OVERWRITTEN")},
            timeout=60,
        )
        assert form.status_code == 403, target
    after = {p: p.read_bytes() for p in before}
    assert after == before
    assert sorted(outside.rglob("*")) == paths_before
    assert not Path(f"{job.dir}_evil/new").exists() and not (job.dir / "new.txt").exists()
    assert (job.dir / "stdout").read_bytes()[: len(stdout_before)] == stdout_before
    assert not (job.dir / "work" / "link-to-nothing").resolve().exists()
    assert temp_files(job.dir) == [] and temp_files(job.dir.parents[2] / "tmp") == []


def test_file_path_source__is_403_and_the_file_is_never_read(job: JobRef, outside: Path) -> None:
    for body in (
        {"data": {"__file_path": str(outside / "secret")}},
        {"data": {"__file_path": str(outside / "secret")}, "files": {"file": ("f", b"x")}},
    ):
        response = no_leak(
            requests.post(
                job.url, params={"job_key": job.key, "path": "work/fp.txt"}, timeout=60, **body
            )
        )
        assert response.status_code == 403
        assert "__file_path" in response.json()["err_msg"]
        assert response.json()["err_code"] == 403004
    assert not (job.dir / "work" / "fp.txt").exists()
