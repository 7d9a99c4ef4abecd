"""The Tornado app in-process (pytest-tornado): auth, error mapping, submit validation.

A real HTTP server on 127.0.0.1, a real SQLite store, no scheduler: jobs stay
queued, so these tests are fast and check acceptance only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.ioloop import IOLoop

from jobferry.api.app import make_app
from jobferry.api.base import status_for
from jobferry.config import parse_config
from jobferry.errors import (
    AuthenticationError,
    ConflictError,
    FormError,
    JobferryError,
    NotFoundError,
    PathRejectedError,
    ScriptNotFoundError,
    ValidationError,
)
from jobferry.runners.fake import FakeRunner
from jobferry.services.container import Services, build
from jobferry.services.core import Core
from jobferry.services.scripts import ScriptUpload
from jobferry.store.engine import check_schema
from tests.db import with_database

JOBS = Path(__file__).resolve().parent.parent / "data" / "jobs"


@pytest.fixture
def io_loop() -> Iterator[IOLoop]:
    """pytest-tornado's io_loop, but closing its asyncio loop (and self-pipe) afterwards."""
    asyncio_loop = asyncio.new_event_loop()
    asyncio.set_event_loop(asyncio_loop)
    loop = IOLoop.current()
    yield loop
    loop.close(all_fds=True)
    asyncio.set_event_loop(None)
    asyncio_loop.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    data = tmp_path / "data"
    config = parse_config(
        with_database({"data_dir": str(data), "server": {"max_upload_mb": 1}}, data)
    )
    core = Core(config, runners={"local": FakeRunner()})
    core.ensure_dirs()
    check_schema(core.engine)
    services = build(core)
    services.auth.ensure_admin()
    admin = services.auth.authenticate((core.data_path / "admin-api-key").read_text().strip())
    copy = tmp_path / "wordcount.py"
    copy.write_bytes((JOBS / "wordcount.py").read_bytes())
    services.scripts.add_or_update(admin, [ScriptUpload("wordcount", copy, "wordcount.py")])
    yield services
    core.close()


@pytest.fixture
def app(services: Services) -> tornado.web.Application:
    return make_app(services)


@pytest.fixture
def key(services: Services) -> str:
    return (services.core.data_path / "admin-api-key").read_text().strip()


async def fetch(
    client: AsyncHTTPClient, url: str, key: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = dict(kw.pop("headers", {}))
    if key:
        headers["Authorization"] = f"Bearer {key}"
    response: HTTPResponse = await client.fetch(url, headers=headers, raise_error=False, **kw)
    return response.code, json.loads(response.body or b"null")


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    boundary = "jobferry-test-boundary"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, data) in files.items():
        parts.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def test_status_for__maps_each_error_class_once() -> None:
    assert status_for(FormError()) == 200
    assert status_for(ScriptNotFoundError()) == 200
    assert status_for(ValidationError()) == 400
    assert status_for(AuthenticationError()) == 403
    assert status_for(PathRejectedError()) == 403
    assert status_for(NotFoundError()) == 404
    assert status_for(ConflictError()) == 409
    assert status_for(JobferryError()) == 500


@pytest.mark.gen_test
async def test_missing_key__is_403_json(http_client: AsyncHTTPClient, base_url: str) -> None:
    code, body = await fetch(http_client, base_url + "/api/jobs/v1/abc/status/")
    assert code == 403
    assert body["errors"] == {"__all__": ["Must be authenticated to use this method."]}


@pytest.mark.gen_test
async def test_submit__valid_job_is_queued_with_its_upload(
    http_client: AsyncHTTPClient, base_url: str, key: str, services: Services
) -> None:
    content_type, body = multipart(
        {"job_name": "n", "command": "-i doc --repeat 2"}, {"doc": ("../../evil name.txt", b"hi")}
    )
    code, answer = await fetch(
        http_client,
        base_url + "/api/scripts/v1/wordcount/submit/",
        key,
        method="POST",
        body=body,
        headers={"Content-Type": content_type},
    )
    assert code == 200 and answer["valid"] is True
    job_id = answer["job_id"]
    code, status = await fetch(http_client, f"{base_url}/api/jobs/v1/{job_id}/status/", key)
    assert (code, status) == (200, {"status": "queued", "is_complete": False})
    job_dir = services.core.job_dir(job_id)
    inputs = [p for p in (job_dir / "inputs").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in inputs] == [b"hi"]
    assert inputs[0].name == "evil_name.txt"
    assert inputs[0].resolve().is_relative_to(job_dir.resolve())


@pytest.mark.gen_test
async def test_submit__hostile_command_strings_stay_literal_arguments(
    http_client: AsyncHTTPClient, base_url: str, key: str, services: Services
) -> None:
    content_type, body = multipart(
        {"job_name": "n", "command": "-i doc -o '$(touch pwned);`id`|x'"}, {"doc": ("d", b"x")}
    )
    code, answer = await fetch(
        http_client,
        base_url + "/api/scripts/v1/wordcount/submit/",
        key,
        method="POST",
        body=body,
        headers={"Content-Type": content_type},
    )
    assert code == 200, answer
    view = services.jobs.get(services.auth.authenticate(key), answer["job_id"])
    assert "--out=$(touch pwned);`id`|x" in view.job.argv


@pytest.mark.gen_test
async def test_submit__oversize_body_is_413_before_reading_it(
    http_client: AsyncHTTPClient, base_url: str, key: str, services: Services
) -> None:
    content_type, body = multipart({"job_name": "n"}, {"doc": ("d", b"x" * (2 * 1024 * 1024))})
    code, answer = await fetch(
        http_client,
        base_url + "/api/scripts/v1/wordcount/submit/",
        key,
        method="POST",
        body=body,
        headers={"Content-Type": content_type},
    )
    assert code == 413 and answer["error"] == "payload_too_large"
    assert not any(services.core.tmp_path.iterdir())


@pytest.mark.gen_test
async def test_submit__malformed_json_body_is_400(
    http_client: AsyncHTTPClient, base_url: str, key: str
) -> None:
    code, answer = await fetch(
        http_client,
        base_url + "/api/scripts/v1/wordcount/submit/",
        key,
        method="POST",
        body=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert code == 400 and "JSON" in answer["message"]


def test_expired_key_cache__concurrent_requests_ask_the_store_once(services: Services) -> None:
    key = (services.core.data_path / "admin-api-key").read_text().strip()
    auth = services.auth
    auth._verified.clear()  # as if the cached entry had just expired
    lookups: list[str] = []
    real_lookup = auth._lookup

    def counted(digest: str) -> Any:
        lookups.append(digest)
        time.sleep(0.05)  # a slow store: every request arrives while it answers
        return real_lookup(digest)

    auth._lookup = counted  # type: ignore[method-assign]
    with ThreadPoolExecutor(8) as pool:
        principals = list(pool.map(auth.authenticate, [key] * 8))
    assert len(lookups) == 1
    assert {p.username for p in principals} == {"admin"}
