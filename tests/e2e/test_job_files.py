"""job_files (galaxy-contract.md §5-6) through a real daemon: GET/HEAD/Range, streamed POST,
the job_key and state gates, and a corpus of confinement attacks that must leak nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
import requests

from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = b"JOBFERRY-SECRET-MARKER-7f3a"
INPUT_TEXT = b"an input file for the job\n" * 10
INVALID_KEY = "Invalid job_key supplied."
COMPLETED = "Attempting to read or modify the files of a job that has already completed."
MB = 1024 * 1024


@dataclass(frozen=True)
class JobRef:
    id: str
    key: str
    dir: Path
    url: str

    def get(self, path: str, **kw: Any) -> requests.Response:
        params = {"job_key": self.key, "path": path, **kw.pop("params", {})}
        return requests.get(self.url, params=params, timeout=30, **kw)

    def post(self, path: str | None, data: Any = b"", **kw: Any) -> requests.Response:
        params: dict[str, str] = {"job_key": self.key, **kw.pop("params", {})}
        if path is not None:
            params["path"] = path
        files = kw.pop("files", {"file": ("filename", data)})
        return requests.post(self.url, params=params, files=files, timeout=60, **kw)


def start_job(daemon: DaemonProcess, client: Client, seconds: str = "90", **kw: Any) -> JobRef:
    job_id = client.submit("sleeper", seconds, **kw)
    key = daemon.cli("job", "key", job_id).stdout.strip()
    job_dir = daemon.data_dir / "jobs" / job_id[:2] / job_id
    return JobRef(job_id, key, job_dir, f"{daemon.url}/api/jobs/{job_id}/files")


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".upload")]


def temp_sizes(directory: Path) -> list[int]:
    sizes = []
    for path in temp_files(directory):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            pass  # removed meanwhile
    return sizes


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("jobfiles")
    proc = DaemonProcess(base / "data", {"server": {"max_upload_mb": 1100}}).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Client:
    client = daemon.client()
    client.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    return client


@pytest.fixture(scope="module")
def job(daemon: DaemonProcess, admin: Client) -> Iterator[JobRef]:
    """A long job with an input file, running (it has printed to stdout)."""
    ref = start_job(daemon, admin, files={"extra": ("input.txt", INPUT_TEXT)})
    try:
        assert eventually(lambda: (ref.dir / "stdout").read_bytes().startswith(b"pid "))
        yield ref
    finally:
        daemon.cli("job", "cancel", ref.id, check=False)


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


@pytest.fixture(scope="module")
def grace_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("jobfiles-grace")
    # Long enough that a busy machine still reads and posts within it after the end.
    config = {"jobs": {"files_grace_s": 15}, "server": {"max_upload_mb": 1}}
    proc = DaemonProcess(base / "data", config).start()
    try:
        proc.client().add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
        yield proc
    finally:
        proc.stop()


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


# --- POST -------------------------------------------------------------------------------------


def test_post__pulsar_form_writes_an_output_that_downloads_back(job: JobRef) -> None:
    payload = os.urandom(300_000)
    target = f"{job.dir}/work/results/out.bin"
    response = job.post(target, payload, params={"file_type": "output_workdir"})
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "ok"}
    assert (job.dir / "work" / "results" / "out.bin").read_bytes() == payload
    back = job.get(target, params={"file_type": "output"})
    assert back.status_code == 200 and back.content == payload
    assert temp_files(job.dir) == []


def test_post__replaces_an_existing_file(job: JobRef) -> None:
    assert job.post("work/replace.txt", b"first version, longer").status_code == 200
    assert job.post("work/replace.txt", b"second").status_code == 200
    assert job.get("work/replace.txt").content == b"second"


@pytest.mark.parametrize("name", ["tool_stdout", "outputs/tool_stderr"])
def test_post__tool_stdout_and_stderr_are_appended(job: JobRef, name: str) -> None:
    for part in (b"line one\n", b"line two\n"):
        assert job.post(f"work/{name}", part).status_code == 200
    assert job.get(f"work/{name}").content == b"line one\nline two\n"


def test_post__dunder_file_part_is_accepted(job: JobRef) -> None:
    response = job.post("work/dunder.txt", files={"__file": ("f", b"via __file")})
    assert response.status_code == 200
    assert job.get("work/dunder.txt").content == b"via __file"


def test_post__path_and_key_from_the_form(job: JobRef) -> None:
    response = requests.post(
        job.url,
        data={"job_key": job.key, "path": f"{job.dir}/work/form-only.txt"},
        files={"file": ("f", b"form fields only")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert job.get("work/form-only.txt").content == b"form fields only"
    assert temp_files(job.dir) == [] and temp_files(job.dir.parents[2] / "tmp") == []


def test_post__path_after_the_file_part_is_staged_then_moved(job: JobRef) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        f"content first\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\nwork/late.txt\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    response = requests.post(
        job.url,
        params={"job_key": job.key},
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert job.get("work/late.txt").content == b"content first"
    assert temp_files(job.dir) == []


def test_post__query_values_win_over_form_values(job: JobRef) -> None:
    response = requests.post(
        job.url,
        params={"job_key": job.key, "path": "work/from-query.txt"},
        data={"job_key": "wrong", "path": "work/from-form.txt"},
        files={"file": ("f", b"query wins")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert job.get("work/from-query.txt").content == b"query wins"
    assert job.get("work/from-form.txt").status_code == 404
    wrong = requests.post(
        job.url,
        params={"job_key": "0" * 64, "path": "work/wrong-key.txt"},
        data={"job_key": job.key},
        files={"file": ("f", b"never")},
        timeout=30,
    )
    assert wrong.status_code == 403 and wrong.json()["err_msg"] == INVALID_KEY
    assert not (job.dir / "work" / "wrong-key.txt").exists()


def test_post__without_a_file_is_400_and_leaves_nothing(job: JobRef) -> None:
    response = requests.post(
        job.url,
        params={"job_key": job.key, "path": "work/nofile.txt"},
        files={"other": ("o", b"not the file field")},
        data={"x": "y"},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["err_msg"] == "No file uploaded."
    assert response.json()["err_code"] == 400007
    assert not (job.dir / "work" / "nofile.txt").exists() and temp_files(job.dir) == []


def test_post__two_file_parts_are_400(job: JobRef) -> None:
    response = job.post("work/two.txt", files=[("file", ("a", b"a")), ("__file", ("b", b"b"))])
    assert response.status_code == 400
    assert not (job.dir / "work" / "two.txt").exists() and temp_files(job.dir) == []


def test_post__unknown_session_id_is_400(job: JobRef) -> None:
    for session_id, message in [
        ("8f2d6c0e2b4d4c7f", "No upload found for session id."),
        ("../../etc", "Invalid session id format."),
    ]:
        response = requests.post(
            job.url,
            params={"job_key": job.key, "path": "work/tus.txt"},
            data={"session_id": session_id},
            timeout=60,
        )
        assert response.status_code == 400 and response.json()["err_msg"] == message


def test_post__other_content_types_are_400(job: JobRef) -> None:
    response = requests.post(
        job.url,
        params={"job_key": job.key, "path": "work/raw.txt"},
        data=b"raw",
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 400
    assert not (job.dir / "work" / "raw.txt").exists()


def test_post__truncated_multipart_body_is_400_and_leaves_nothing(job: JobRef) -> None:
    body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\nhalf'
    response = requests.post(
        job.url,
        params={"job_key": job.key, "path": "work/truncated.txt"},
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=B"},
        timeout=60,
    )
    assert response.status_code == 400
    assert not (job.dir / "work" / "truncated.txt").exists() and temp_files(job.dir) == []


@pytest.mark.parametrize("path_in", ["query", "form"])
def test_post__upload_cut_off_half_way_leaves_no_file(
    daemon: DaemonProcess, job: JobRef, path_in: str
) -> None:
    boundary = "XyZ"
    target = "work/cut/off.bin"
    head = b""
    query = f"job_key={job.key}"
    if path_in == "query":
        query += f"&path={quote(target)}"
    else:
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{target}\r\n'
        ).encode()
    watched = daemon.data_dir / "tmp" / "uploads"  # the staging area, never the job's dir
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    payload = head + b"y" * 500_000
    host, port = daemon.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            (
                f"POST /api/jobs/{job.id}/files?{query} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(payload) * 2}\r\n\r\n"
            ).encode()
            + payload
        )
        streaming = eventually(lambda: any(size > 0 for size in temp_sizes(watched)))
        assert streaming, "the upload should be streaming to a temporary file"
        assert temp_files(job.dir) == []
    # The temp file goes first, then the directories the upload created.
    cut = job.dir / "work" / "cut"
    gone = eventually(lambda: not temp_files(watched) and not cut.exists())
    assert gone, (temp_files(watched), cut.exists())


def test_post__over_the_size_cap_is_413_and_leaves_nothing(grace_daemon: DaemonProcess) -> None:
    ref = start_job(grace_daemon, grace_daemon.client(), "30")
    try:
        response = ref.post("work/big.bin", b"z" * (2 * MB))
        assert response.status_code == 413
        assert not (ref.dir / "work" / "big.bin").exists() and temp_files(ref.dir) == []

        def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse up front
            yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
            for _ in range(40):
                yield b"z" * 65536

        try:
            chunked = requests.post(
                ref.url,
                params={"job_key": ref.key, "path": "work/big2.bin"},
                data=chunks(),
                headers={"Content-Type": "multipart/form-data; boundary=B"},
                timeout=30,
            )
            assert chunked.status_code == 413
        except requests.ConnectionError:
            pass  # the daemon answered and closed while the client was still sending
        assert eventually(lambda: not temp_files(ref.dir))
        assert not (ref.dir / "work" / "big2.bin").exists()
    finally:
        grace_daemon.cli("job", "cancel", ref.id, check=False)


# In CI a missing curl must fail the test, not skip it.
@pytest.mark.skipif(
    shutil.which("curl") is None and os.environ.get("CI") != "true", reason="curl is not installed"
)
def test_pulsar_curl_transport__upload_then_resumed_download(job: JobRef, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    payload = os.urandom(200_000)
    local.write_bytes(payload)
    query = f"job_key={job.key}&path={quote(f'{job.dir}/work/curl.bin')}&file_type=output"
    upload = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-F", f"file=@{local}",
         f"{job.url}?{query}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert upload.stdout == "200", upload.stderr
    partial = tmp_path / "partial.bin"
    partial.write_bytes(payload[:50_000])
    resumed = subprocess.run(
        ["curl", "-sS", "-f", "-C", "-", "-o", str(partial), f"{job.url}?{query}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert partial.read_bytes() == payload


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


# --- the state gate ---------------------------------------------------------------------------


def test_files_stay_open_for_the_grace_period_after_the_job_ends(
    grace_daemon: DaemonProcess,
) -> None:
    client = grace_daemon.client()
    ref = start_job(grace_daemon, client, "0.1")
    client.wait(ref.id, 30)
    assert ref.get("stdout").status_code == 200
    assert ref.post("work/late-output.txt", b"late").status_code == 200
    # A late upload becomes an output of the finished job.
    late = [a for a in client.wait(ref.id, 30)["assets"] if a["name"] == "late-output.txt"]
    assert len(late) == 1 and late[0]["size"] == 4
    refused = eventually(lambda: ref.get("stdout").status_code == 403)
    assert refused, "files should close files_grace_s after the job ended"
    for response in (ref.get("stdout"), ref.post("work/too-late.txt", b"x")):
        assert response.status_code == 403
        assert response.json()["err_msg"] == COMPLETED
        assert response.json()["err_code"] == 403002
    assert not (ref.dir / "work" / "too-late.txt").exists()
    # A wrong key still says only that the key is wrong.
    wrong = requests.get(ref.url, params={"job_key": "0" * 64, "path": "stdout"}, timeout=60)
    assert wrong.json()["err_msg"] == INVALID_KEY


def test_cancelled_job__files_close_after_the_grace_period(grace_daemon: DaemonProcess) -> None:
    ref = start_job(grace_daemon, grace_daemon.client(), "60")
    assert ref.get("work/none").status_code == 404  # open while active
    grace_daemon.cli("job", "cancel", ref.id)
    assert eventually(lambda: ref.get("work/none").status_code == 403)


# --- 1 GiB with flat memory -------------------------------------------------------------------


class RssSampler:
    """The peak RSS of a process, sampled every few milliseconds in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.process.memory_info().rss)


def generated_body(boundary: str, size: int, digest: Any) -> Iterator[bytes]:
    """A multipart body around *size* generated bytes, never all in memory."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    block = bytearray(os.urandom(MB))
    sent = 0
    while sent < size:
        block[:8] = sent.to_bytes(8, "little")
        chunk = bytes(block[: min(MB, size - sent)])
        digest.update(chunk)
        sent += len(chunk)
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.timeout(180)
def test_one_gib_upload_and_download__daemon_memory_stays_flat(
    daemon: DaemonProcess, job: JobRef
) -> None:
    """Required, part of the normal run (about 10-20 s): 1 GiB each way, RSS flat, same bytes."""
    assert daemon.proc is not None
    size = 1024 * MB
    target = "work/one-gib.bin"
    # Warm up (imports, buffers) so that idle RSS is the steady state.
    assert job.post("work/warm.bin", b"w" * MB).status_code == 200
    assert len(job.get("work/warm.bin").content) == MB
    idle = psutil.Process(daemon.proc.pid).memory_info().rss
    sent = hashlib.sha256()
    try:
        started = time.monotonic()
        with RssSampler(daemon.proc.pid) as upload_rss:
            response = requests.post(
                job.url,
                params={"job_key": job.key, "path": target},
                data=generated_body("gIgAbYtE", size, sent),
                headers={"Content-Type": "multipart/form-data; boundary=gIgAbYtE"},
                timeout=120,
            )
        upload_s = time.monotonic() - started
        assert response.status_code == 200, response.text
        assert (job.dir / target).stat().st_size == size
        received = hashlib.sha256()
        total = 0
        started = time.monotonic()
        with RssSampler(daemon.proc.pid) as download_rss:
            with job.get(target, stream=True) as download:
                assert download.status_code == 200
                assert download.headers["Content-Length"] == str(size)
                for chunk in download.iter_content(MB):
                    received.update(chunk)
                    total += len(chunk)
        download_s = time.monotonic() - started
    finally:
        (job.dir / target).unlink(missing_ok=True)
    assert total == size
    assert received.hexdigest() == sent.hexdigest()
    print(
        f"1 GiB: upload {size / MB / upload_s:.0f} MB/s, peak +{(upload_rss.peak - idle) / MB:.1f}"
        f" MB; download {size / MB / download_s:.0f} MB/s,"
        f" peak +{(download_rss.peak - idle) / MB:.1f} MB"
    )
    assert upload_rss.peak - idle < 60 * MB
    assert download_rss.peak - idle < 60 * MB
