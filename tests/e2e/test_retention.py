"""Retention against a real daemon: its background round deletes the files of a job whose
end is set back in time, and every face then answers that job's files with 410 Gone
(``files_expired: true``); ``jobferry job purge`` (dry run, then for real, then rows)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.db import store_sql
from tests.e2e.cli_helpers import as_json, assert_one_line_error
from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, running_daemon, wait_for

pytestmark = pytest.mark.e2e

#: The daemon's retention: files of jobs that ended a day ago, a round twice a second.
CONFIG = {"retention": {"files_days": 1, "interval_s": 0.5, "batch": 50}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("retention") / "data", CONFIG) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Client:
    client = daemon.client()
    client.add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
    return client


def finished_job(admin: Client, text: bytes = b"one two three") -> tuple[str, dict[str, Any]]:
    """A completed wordcount job (output ``count.txt``) and its Wooey details."""
    job_id = admin.submit("wordcount", "--infile doc", files={"doc": ("doc.txt", text)})
    details = admin.wait(job_id)
    assert details["status"] == "completed" and details["files_expired"] is False, details
    return job_id, details


def ended_ago(daemon: DaemonProcess, job_id: str, days: float) -> None:
    """Set the job's end *days* back (the column holds naive UTC)."""
    then = (datetime.now(UTC) - timedelta(days=days)).replace(tzinfo=None)
    store_sql(
        daemon.database_url,
        "UPDATE jobs SET finished_at = :t WHERE id = :id",
        {"t": then, "id": job_id},
    )


def local(url: str) -> str:
    return "/" + url.split("//", 1)[1].split("/", 1)[1]


def assert_gone(response: requests.Response, job_id: str) -> dict[str, Any]:
    assert response.status_code == 410, response.text
    body = dict(response.json())
    assert body["error"] == "gone" and body["err_code"] == 410001
    assert body["details"]["files_expired"] is True and body["details"]["job_id"] == job_id
    return body


def test_retention_round__expires_old_files_and_every_face_answers_410(
    daemon: DaemonProcess, admin: Client
) -> None:
    old, details = finished_job(admin)
    recent, recent_details = finished_job(admin, b"four five")
    asset = local(details["assets"][0]["url"])
    assert admin.get(asset).status_code == 200
    dataset_id = asset.rstrip("/").rsplit("/", 1)[1]
    job_dir = Path(as_json(daemon.cli("job", "show", old, "--json"))["job_dir"])
    assert job_dir.is_dir()
    job_key = daemon.cli("job", "key", old).stdout.strip()

    ended_ago(daemon, old, 2)
    expired = wait_for(
        "the background round to expire the job's files",
        lambda: (d := admin.get(f"/api/jobs/v1/{old}/details/").json())["files_expired"] and d,
    )

    # Wooey: the details say so, the asset (GET and HEAD) is 410 in Wooey's error shape.
    assert (
        expired["assets"] == [] and expired["stdout"] is None and expired["status"] == "completed"
    )
    wooey = assert_gone(admin.get(asset), old)
    assert wooey["valid"] is False and "expired" in wooey["message"]
    assert admin.head(asset).status_code == 410
    # Galaxy: the job and its dataset say so, the display is 410; job_files GET too.
    shown = admin.get(f"/api/jobs/{old}", params={"full": "true"}).json()
    assert shown["files_expired"] is True and shown["stdout"] == ""
    dataset = admin.get(f"/api/datasets/{dataset_id}").json()
    assert dataset["purged"] is True and dataset["deleted"] is True
    assert_gone(admin.get(f"/api/datasets/{dataset_id}/display"), old)
    files = requests.get(
        f"{daemon.url}/api/jobs/{old}/files",
        params={"job_key": job_key, "path": "work/count.txt"},
        timeout=60,
    )
    assert_gone(files, old)
    # On disk: the directory is gone, no leftover beside it.
    assert not job_dir.exists() and not list(job_dir.parent.glob(".expired-*"))
    # The recent job is untouched.
    recent_asset = local(recent_details["assets"][0]["url"])
    assert admin.get(recent_asset).status_code == 200
    assert admin.get(f"/api/jobs/v1/{recent}/details/").json()["files_expired"] is False


def test_job_purge__dry_run_then_purge_print_the_jobs_and_the_bytes_freed(
    daemon: DaemonProcess, admin: Client
) -> None:
    job_id, details = finished_job(admin, b"a b c d e f")
    asset = local(details["assets"][0]["url"])
    # Half a day: older than the purge's cutoff below, not the daemon's (one day).
    ended_ago(daemon, job_id, 0.5)

    dry = daemon.cli("job", "purge", "--older-than", "0.25", "--dry-run")
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("would remove the files of 1 job(s)"), dry.stdout
    assert "would free" in lines[0] and lines[1] == job_id
    dry_json = as_json(daemon.cli("job", "purge", "--older-than", "0.25", "--dry-run", "--json"))
    assert dry_json["dry_run"] is True and dry_json["job_ids"] == [job_id]
    freed = dry_json["bytes_freed"]
    assert freed >= details["assets"][0]["size"] + len("counted 6 words\n")
    assert f"would free {freed} bytes" in lines[0]
    assert admin.get(asset).status_code == 200  # nothing removed

    done = daemon.cli("job", "purge", "--older-than", "0.25")
    first, *ids = done.stdout.splitlines()
    assert first.startswith("removed the files of 1 job(s)") and ids == [job_id], done.stdout
    assert f"freed {freed} bytes" in first
    assert_gone(admin.get(asset), job_id)
    again = as_json(daemon.cli("job", "purge", "--older-than", "0.25", "--json"))
    assert again["job_ids"] == [] and again["bytes_freed"] == 0


def test_job_purge_rows__the_job_answers_404_on_both_faces(
    daemon: DaemonProcess, admin: Client
) -> None:
    job_id, details = finished_job(admin)
    dataset_id = local(details["assets"][0]["url"]).rstrip("/").rsplit("/", 1)[1]
    ended_ago(daemon, job_id, 0.5)
    refused = daemon.cli("job", "purge", "--older-than", "0.25", "--state", "running", check=False)
    assert_one_line_error(refused, "terminal")

    done = as_json(
        daemon.cli("job", "purge", "--older-than", "0.25", "--rows", "--state", "ok", "--json")
    )
    assert done["kind"] == "rows" and job_id in done["job_ids"] and done["bytes_freed"] > 0
    assert admin.get(f"/api/jobs/v1/{job_id}/status/").status_code == 404
    assert admin.get(f"/api/jobs/v1/{job_id}/details/").status_code == 404
    assert admin.get(f"/api/jobs/{job_id}").status_code == 404
    assert admin.get(f"/api/datasets/{dataset_id}").status_code == 404
    assert not store_sql(
        daemon.database_url, "SELECT id FROM job_files WHERE job_id = :id", {"id": job_id}
    )
