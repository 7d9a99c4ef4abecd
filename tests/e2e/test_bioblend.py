"""bioblend itself against a real daemon: the Galaxy client library is the acceptance test
of the Galaxy face (config, users, baseauth login, tools, jobs, datasets, cancel)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bioblend import ConnectionError as BioblendConnectionError
from bioblend.galaxy import GalaxyInstance

from tests.helpers import JOB_SCRIPTS, Client, DaemonProcess, eventually

pytestmark = pytest.mark.e2e

HISTORY = "f2db41e1fa331b3e"
PASSWORD = "bioblend-pw-1"
#: bioblend's own wait helpers poll every 3 s by default; these tests poll faster.
POLL_S = 0.1


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("bioblend")
    config = {"runners": {"local": {"kill_grace_s": 2.0, "slots": 2}}}
    proc = DaemonProcess(base / "data", config).start()
    try:
        wooey = proc.client()
        wooey.add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
        wooey.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> GalaxyInstance:
    return GalaxyInstance(daemon.url, key=daemon.admin_key)


@pytest.fixture(scope="module")
def user(daemon: DaemonProcess, admin: GalaxyInstance) -> GalaxyInstance:
    """A local user created through bioblend, logged in with email and password."""
    created = admin.users.create_local_user("dora", "dora@example.org", PASSWORD)
    assert created["username"] == "dora"
    return GalaxyInstance(daemon.url, email="dora@example.org", password=PASSWORD)


@pytest.fixture(scope="module")
def first_job(daemon: DaemonProcess, user: GalaxyInstance) -> str:
    """A finished wordcount job of the user's, with an uploaded input (Wooey face:
    bioblend's own uploads need Galaxy's fetch API)."""
    wooey = Client(daemon.url, str(user.key))
    job_id = wooey.submit(
        "wordcount", "--infile doc", files={"doc": ("doc.txt", b"alpha beta gamma delta")}
    )
    assert wooey.wait(job_id)["status"] == "completed"
    return job_id


def run_wordcount(gi: GalaxyInstance, dataset_id: str, **inputs: Any) -> str:
    result = gi.tools.run_tool(
        HISTORY, "wordcount", {"infile": {"src": "hda", "id": dataset_id}, **inputs}
    )
    assert result["outputs"] == [] and len(result["jobs"]) == 1
    return str(result["jobs"][0]["id"])


def input_dataset(gi: GalaxyInstance, job_id: str) -> str:
    return str(gi.jobs.get_inputs(job_id)[0]["dataset"]["id"])


def test_config__version_configuration_and_whoami(
    admin: GalaxyInstance, user: GalaxyInstance
) -> None:
    assert "version_major" in admin.config.get_version()
    assert "brand" in admin.config.get_config()
    assert admin.config.get_config()["is_admin_user"] is True
    assert user.config.get_config()["is_admin_user"] is False
    assert admin.config.whoami()["username"] == "admin"
    assert user.config.whoami()["username"] == "dora"


def test_login__email_or_username_with_password_and_wrong_password_fails(
    daemon: DaemonProcess, user: GalaxyInstance
) -> None:
    by_name = GalaxyInstance(daemon.url, email="dora", password=PASSWORD)
    assert by_name.config.whoami()["email"] == "dora@example.org"
    with pytest.raises(Exception, match="Failed to authenticate user"):
        GalaxyInstance(daemon.url, email="dora@example.org", password="not the password")


def test_users__list_show_current_and_keys(
    daemon: DaemonProcess, admin: GalaxyInstance, user: GalaxyInstance
) -> None:
    names = {u["username"] for u in admin.users.get_users()}
    assert {"admin", "dora"} <= names
    assert [u["username"] for u in admin.users.get_users(f_email="dora@")] == ["dora"]
    assert [u["username"] for u in user.users.get_users()] == ["dora"]
    me = user.users.get_current_user()
    assert user.users.show_user(me["id"])["email"] == "dora@example.org"
    assert admin.users.show_user(me["id"])["username"] == "dora"
    assert user.users.get_or_create_user_apikey(me["id"]) == user.key
    assert user.users.get_user_apikey(me["id"]) == user.key
    # Galaxy's create_user_apikey replaces the user's key (a user of its own: the
    # module's `user` keeps its key).
    old = daemon.cli("user", "create", "emil").stdout.strip()
    emil = GalaxyInstance(daemon.url, key=old).users.get_current_user()["id"]
    fresh = admin.users.create_user_apikey(emil)
    assert GalaxyInstance(daemon.url, key=fresh).config.whoami()["id"] == emil
    with pytest.raises(BioblendConnectionError) as revoked:
        GalaxyInstance(daemon.url, key=old).config.whoami()
    assert revoked.value.status_code == 401
    with pytest.raises(BioblendConnectionError) as refused:
        user.users.create_local_user("eve", "eve@example.org", PASSWORD)
    assert refused.value.status_code == 403


def test_tools__listed_and_shown_with_io_details(user: GalaxyInstance) -> None:
    assert [t["id"] for t in user.tools.get_tools(name="wordcount")] == ["wordcount"]
    panel = user.tools.get_tool_panel()
    assert "sleeper" in [t["id"] for section in panel for t in section["elems"]]
    shown = user.tools.show_tool("wordcount", io_details=True)
    assert [i["name"] for i in shown["inputs"]] == ["infile", "out", "upper", "repeat"]


def test_run_tool__wait_inputs_outputs_state_and_download(
    user: GalaxyInstance, first_job: str, tmp_path: Path
) -> None:
    job_id = run_wordcount(user, input_dataset(user, first_job), repeat=2, upper=True)
    job = user.jobs.wait_for_job(job_id, maxwait=60, interval=POLL_S)
    assert job["state"] == "ok" and job["history_id"] == HISTORY
    assert user.jobs.get_state(job_id) == "ok"
    inputs = user.jobs.get_inputs(job_id)
    assert [i["name"] for i in inputs] == ["infile"]
    outputs = {o["name"]: o["dataset"]["id"] for o in user.jobs.get_outputs(job_id)}
    assert set(outputs) == {"count.txt", "upper.txt"}
    full = user.jobs.show_job(job_id, full_details=True)
    assert full["stdout"] == "counted 4 words\n"
    dataset = user.datasets.show_dataset(outputs["count.txt"])
    assert dataset["state"] == "ok" and dataset["file_size"] == 2
    assert user.datasets.download_dataset(outputs["count.txt"], maxwait=10) == b"8\n"
    saved = user.datasets.download_dataset(outputs["upper.txt"], file_path=str(tmp_path))
    assert Path(saved) == tmp_path / "upper.txt"
    assert Path(saved).read_bytes() == b"ALPHA BETA GAMMA DELTA"
    assert user.jobs.get_common_problems(job_id)["has_empty_inputs"] is False
    assert user.jobs.get_metrics(job_id) == []


def test_get_jobs__filters_paging_order_and_dates(
    admin: GalaxyInstance, user: GalaxyInstance, first_job: str
) -> None:
    dataset = input_dataset(user, first_job)
    ids = [run_wordcount(user, dataset, repeat=r) for r in (1, 2, 3)]
    for job_id in ids:
        user.jobs.wait_for_job(job_id, maxwait=60, interval=POLL_S)
    mine = user.jobs.get_jobs(history_id=HISTORY, tool_id="wordcount")
    assert set(ids) <= {j["id"] for j in mine}
    second = user.jobs.get_jobs(history_id=HISTORY, limit=1, offset=1, order_by="create_time")
    newest = user.jobs.get_jobs(history_id=HISTORY, limit=2, order_by="create_time")
    assert [j["id"] for j in second] == [newest[1]["id"]]
    assert all(j["state"] == "ok" for j in user.jobs.get_jobs(state="ok"))
    today = datetime.now(UTC).date()
    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    assert user.jobs.get_jobs(date_range_max=str(yesterday)) == []
    assert user.jobs.get_jobs(date_range_min=str(tomorrow)) == []
    assert first_job in [j["id"] for j in user.jobs.get_jobs(date_range_min=str(today))]
    detailed = admin.jobs.get_jobs(user_details=True, limit=5)
    assert detailed and all("user_email" in j for j in detailed)
    with pytest.raises(BioblendConnectionError) as refused:
        user.jobs.get_jobs(user_details=True)
    assert refused.value.status_code == 403


def test_search_and_rerun(user: GalaxyInstance, first_job: str) -> None:
    dataset = input_dataset(user, first_job)
    job_id = run_wordcount(user, dataset, repeat=3, out="three.txt")
    user.jobs.wait_for_job(job_id, maxwait=60, interval=POLL_S)
    inputs = {"infile": {"src": "hda", "id": dataset}, "repeat": 3, "out": "three.txt"}
    found = user.jobs.search_jobs("wordcount", inputs)
    assert [j["id"] for j in found] == [job_id]
    assert user.jobs.search_jobs("wordcount", inputs, state="error") == []
    rerun = user.jobs.rerun_job(job_id, tool_inputs_update={"repeat": 1})
    new_id = rerun["jobs"][0]["id"]
    assert user.jobs.wait_for_job(new_id, maxwait=60, interval=POLL_S)["state"] == "ok"
    outputs = {o["name"]: o["dataset"]["id"] for o in user.jobs.get_outputs(new_id)}
    assert user.datasets.download_dataset(outputs["three.txt"]) == b"4\n"


def test_cancel_job__running_job_is_stopped_and_ends_deleted(user: GalaxyInstance) -> None:
    result = user.tools.run_tool(HISTORY, "sleeper", {"seconds": 120})
    job_id = result["jobs"][0]["id"]

    def pid() -> int | None:
        found = re.search(
            r"pid (\d+) sleeping", user.jobs.show_job(job_id, full_details=True)["stdout"] or ""
        )
        return int(found.group(1)) if found else None

    assert eventually(lambda: pid() is not None)
    process = pid()
    assert user.jobs.cancel_job(job_id) is True
    assert user.jobs.get_state(job_id) in ("deleted", "deleting")
    job = user.jobs.wait_for_job(job_id, maxwait=30, interval=POLL_S, check=False)
    assert job["state"] in ("deleted", "deleting")
    assert eventually(lambda: user.jobs.get_state(job_id) == "deleted")
    assert eventually(lambda: not Path(f"/proc/{process}").exists())
    assert user.jobs.cancel_job(job_id) is False
    started = time.monotonic()
    with pytest.raises(Exception, match="terminal state deleted"):
        user.jobs.wait_for_job(job_id, maxwait=10, interval=POLL_S)
    assert time.monotonic() - started < 5
