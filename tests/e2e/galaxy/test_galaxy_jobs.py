"""The Galaxy-compatible face's work side, through a real daemon process on 127.0.0.1,
requested the way bioblend requests it: tools, running tools, jobs (show, search, list,
cancel) and datasets."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.galaxy.support import (
    ADMIN_KEYS,
    ID,
    SUMMARY_KEYS,
    TIMESTAMP,
    Galaxy,
    assert_error,
    dataset_of,
)
from tests.helpers import DaemonProcess, eventually

pytestmark = pytest.mark.e2e


# --- tools --------------------------------------------------------------------------------------


def test_tools__listed_shown_with_io_details_and_unknown_is_404(alice: Galaxy) -> None:
    tools = {t["id"]: t for t in alice.ok("/api/tools")}
    assert {"wordcount", "sleeper"} <= set(tools)
    wordcount = tools["wordcount"]
    assert wordcount["model_class"] == "Tool" and wordcount["name"] == "wordcount"
    assert wordcount["version"] == "1" and wordcount["description"] == "Count the words of a file."
    panel = alice.ok("/api/tools?in_panel=True")
    assert panel[0]["model_class"] == "ToolSection"
    assert "wordcount" in [t["id"] for s in panel for t in s["elems"]]
    assert alice.ok("/api/tools?q=count") == ["wordcount"]
    shown = alice.ok("/api/tools/wordcount")
    assert shown["id"] == "wordcount" and "inputs" not in shown
    detailed = alice.ok("/api/tools/wordcount?io_details=True&link_details=False")
    inputs = {i["name"]: i for i in detailed["inputs"]}
    assert inputs["infile"]["type"] == "data" and inputs["infile"]["optional"] is False
    assert inputs["upper"]["type"] == "boolean" and inputs["upper"]["value"] is False
    assert inputs["repeat"]["type"] == "select"
    assert [o[1] for o in inputs["repeat"]["options"]] == ["1", "2", "3"]
    assert [o["name"] for o in detailed["outputs"]] == ["out"]
    assert_error(alice.get("/api/tools/no-such-tool"), 404, 404001)
    assert_error(alice.get("/api/tools/wordcount?tool_version=9"), 404, 404001)


def test_run_tool__reuses_a_dataset_and_answers_200_with_galaxys_shape(
    alice: Galaxy, alice_job: str
) -> None:
    doc = dataset_of(alice, alice_job, "inputs", "infile")
    result = alice.run(
        "wordcount",
        {"infile": {"src": "hda", "id": doc}, "repeat": "3", "out": "n.txt", "upper": False},
        history_id="f2db41e1fa331b3e",
        input_format="21.01",
    )
    assert set(result) >= {"outputs", "jobs", "implicit_collections", "output_collections"}
    [job] = result["jobs"]
    assert SUMMARY_KEYS <= set(job) and not ADMIN_KEYS & set(job)
    assert job["tool_id"] == "wordcount" and job["history_id"] == "f2db41e1fa331b3e"
    done = alice.wait(job["id"])
    assert done["state"] == "ok" and done["history_id"] == "f2db41e1fa331b3e"
    assert json.loads(done["params"]["repeat"]) == 3
    out = dataset_of(alice, job["id"], "outputs", "n.txt")
    assert alice.get(f"/api/datasets/{out}/display").content == b"9\n"
    assert "upper.txt" not in [o["name"] for o in alice.ok(f"/api/jobs/{job['id']}/outputs")]


def test_run_tool__long_option_names_and_dataset_lists_are_accepted(alice: Galaxy) -> None:
    result = alice.run("sleeper", {"seconds": 0, "exit-code": 3})
    done = alice.wait(result["jobs"][0]["id"])
    assert done["state"] == "error" and done["exit_code"] == 3
    legacy = alice.run("sleeper", {"exit_code": "0", "grandchild": "false"})
    assert alice.wait(legacy["jobs"][0]["id"])["state"] == "ok"


@pytest.mark.parametrize(
    ("inputs", "status", "err_code"),
    [
        ({}, 400, 400008),  # --infile is required
        ({"infile": {"src": "hda", "id": "zz"}}, 400, 400009),
        ({"infile": {"src": "hda", "id": "0000000000000000"}}, 404, 404001),
        ({"infile": "plain text"}, 400, 400008),
        ({"bogus": 1}, 400, 400008),
        ({"repeat": 7, "infile": {"src": "hda", "id": "DOC"}}, 400, 400008),
        ({"out": "../escape.txt", "infile": {"src": "hda", "id": "DOC"}}, 400, 400008),
    ],
)
def test_run_tool__invalid_inputs_are_refused_and_queue_nothing(
    daemon: DaemonProcess,
    alice: Galaxy,
    alice_job: str,
    inputs: dict[str, Any],
    status: int,
    err_code: int,
) -> None:
    doc = dataset_of(alice, alice_job, "inputs", "infile")
    inputs = json.loads(json.dumps(inputs).replace("DOC", doc))
    before = alice.ok("/api/jobs?limit=1000")
    response = alice.post("/api/tools", {"tool_id": "wordcount", "inputs": inputs})
    assert_error(response, status, err_code)
    assert len(alice.ok("/api/jobs?limit=1000")) == len(before)
    assert not any((daemon.data_dir / "tmp").iterdir())


def test_run_tool__unknown_tool_is_404_and_missing_tool_id_400(alice: Galaxy) -> None:
    assert_error(alice.post("/api/tools", {"tool_id": "nope", "inputs": {}}), 404, 404001)
    assert_error(alice.post("/api/tools", {"inputs": {}}), 400, 400008)
    assert_error(alice.post("/api/tools", ["not", "an", "object"]), 400, 400008)


def test_run_tool__another_users_dataset_is_404_as_if_missing(
    alice_job: str, alice: Galaxy, bob: Galaxy
) -> None:
    """Guards: a 403 for another user's dataset told that its id exists (ids could be probed)."""
    doc = dataset_of(alice, alice_job, "inputs", "infile")
    response = bob.post("/api/tools", {"tool_id": "wordcount", "inputs": {"infile": {"id": doc}}})
    assert_error(response, 404, 404001)


# --- jobs: show, inputs, outputs ----------------------------------------------------------------


def test_show_job__element_view_for_owner_admin_extras_and_full_logs(
    admin: Galaxy, alice: Galaxy, alice_job: str
) -> None:
    job = alice.ok(f"/api/jobs/{alice_job}")
    assert SUMMARY_KEYS <= set(job) and not ADMIN_KEYS & set(job)
    assert (job["model_class"], job["id"], job["state"], job["exit_code"]) == (
        "Job",
        alice_job,
        "ok",
        0,
    )
    assert TIMESTAMP.match(job["create_time"]) and TIMESTAMP.match(job["update_time"])
    assert job["tool_id"] == "wordcount" and job["galaxy_version"] == "24.1"
    assert job["params"] == {"upper": "true"}
    assert set(job["inputs"]) == {"infile"}
    assert job["inputs"]["infile"]["src"] == "hda" and ID.match(job["inputs"]["infile"]["id"])
    assert set(job["outputs"]) == {"count.txt", "upper.txt"}
    assert "tool_stdout" not in job
    full = alice.ok(f"/api/jobs/{alice_job}?full=True")
    assert full["tool_stdout"] == full["stdout"] == "counted 3 words\n"
    assert full["job_messages"] == [] and "job_metrics" not in full
    as_admin = admin.ok(f"/api/jobs/{alice_job}", params={"full": "true"})
    assert ADMIN_KEYS <= set(as_admin) and "--upper" in as_admin["command_line"]
    assert as_admin["user_email"] == "alice@example.org"
    metrics = {m["name"]: m for m in as_admin["job_metrics"]}
    assert {"start_epoch", "end_epoch", "runtime_seconds"} <= set(metrics)
    assert set(metrics["runtime_seconds"]) == {"title", "value", "plugin", "name", "raw_value"}
    assert admin.ok(f"/api/jobs/{alice_job}/metrics") == as_admin["job_metrics"]
    assert alice.ok(f"/api/jobs/{alice_job}/metrics") == []
    assert alice.ok(f"/api/jobs/{alice_job}/common_problems") == {
        "has_empty_inputs": False,
        "has_duplicate_inputs": False,
    }


def test_show_job__other_users_unknown_and_malformed_ids(
    bob: Galaxy, alice_job: str, alice: Galaxy
) -> None:
    # Another user's job answers exactly as a missing one (a 403 let ids be probed).
    for suffix in ("", "/inputs", "/outputs", "/build_for_rerun"):
        theirs = bob.get(f"/api/jobs/{alice_job}{suffix}")
        missing = bob.get(f"/api/jobs/0123456789abcdef{suffix}")
        assert_error(theirs, 404, 404001)
        assert theirs.json() == missing.json()
        assert_error(alice.get(f"/api/jobs/0123456789abcdef{suffix}"), 404, 404001)
        for bad in ("123", "0123456789ABCDEF", "0123456789abcdef0", "..%2F..%2Fetc"):
            assert_error(alice.get(f"/api/jobs/{bad}{suffix}"), 400, 400009)
    assert_error(alice.get(f"/api/jobs/{alice_job}/destination_params"), 403, 403006)


def test_inputs_and_outputs__exact_list_shapes(alice: Galaxy, alice_job: str) -> None:
    job = alice.ok(f"/api/jobs/{alice_job}")
    inputs = alice.ok(f"/api/jobs/{alice_job}/inputs")
    assert inputs == [
        {"name": "infile", "dataset": {"src": "hda", "id": job["inputs"]["infile"]["id"]}}
    ]
    outputs = alice.ok(f"/api/jobs/{alice_job}/outputs")
    assert outputs == [
        {"name": name, "dataset": {"src": "hda", "id": job["outputs"][name]["id"]}}
        for name in ("count.txt", "upper.txt")
    ]


def test_build_for_rerun__gives_inputs_that_rerun_the_same_job(
    alice: Galaxy, alice_job: str
) -> None:
    template = alice.ok(f"/api/jobs/{alice_job}/build_for_rerun")
    assert template["id"] == "wordcount" and template["job_remap"] is False
    doc = dataset_of(alice, alice_job, "inputs", "infile")
    assert template["state_inputs"] == {"infile": {"src": "hda", "id": doc}, "upper": True}
    result = alice.run(template["id"], template["state_inputs"], history_id=template["history_id"])
    rerun = result["jobs"][0]["id"]
    assert alice.wait(rerun)["state"] == "ok"
    original = {o["name"] for o in alice.ok(f"/api/jobs/{alice_job}/outputs")}
    assert {o["name"] for o in alice.ok(f"/api/jobs/{rerun}/outputs")} == original


# --- jobs: search -------------------------------------------------------------------------------


def test_search__finds_the_callers_jobs_with_same_params_and_input_content(
    alice: Galaxy, bob: Galaxy, alice_job: str
) -> None:
    doc = dataset_of(alice, alice_job, "inputs", "infile")
    inputs = {"infile": {"src": "hda", "id": doc}, "repeat": 2}
    first = alice.run("wordcount", inputs)["jobs"][0]["id"]
    alice.wait(first)
    response = alice.post("/api/jobs/search", {"tool_id": "wordcount", "inputs": inputs})
    assert response.status_code == 200, response.text
    found = [j["id"] for j in response.json()]
    assert first in found and alice_job not in found
    assert all(j["params"].get("repeat") == "2" for j in response.json())
    as_string = alice.post(
        "/api/jobs/search", {"tool_id": "wordcount", "inputs": json.dumps(inputs), "state": "ok"}
    )
    assert first in [j["id"] for j in as_string.json()]
    other_state = alice.post(
        "/api/jobs/search", {"tool_id": "wordcount", "inputs": inputs, "state": "error"}
    )
    assert other_state.json() == []
    different = alice.post(
        "/api/jobs/search", {"tool_id": "wordcount", "inputs": {**inputs, "repeat": 3}}
    )
    assert first not in [j["id"] for j in different.json()]
    assert alice.post("/api/jobs/search", {"tool_id": "wordcount", "inputs": {"x": 1}}).json() == []
    assert_error(
        bob.post("/api/jobs/search", {"tool_id": "wordcount", "inputs": inputs}), 404, 404001
    )
    assert_error(alice.post("/api/jobs/search", {"tool_id": "nope", "inputs": {}}), 404, 404001)
    assert_error(alice.post("/api/jobs/search", {"tool_id": "wordcount"}), 400, 400008)


# --- jobs: listing ------------------------------------------------------------------------------


def test_list_jobs__users_see_their_own_admins_everyones(
    admin: Galaxy, alice: Galaxy, bob: Galaxy, alice_job: str
) -> None:
    mine = alice.ok("/api/jobs")
    assert alice_job in [j["id"] for j in mine]
    assert all(SUMMARY_KEYS == set(j) for j in mine)
    assert alice_job not in [j["id"] for j in bob.ok("/api/jobs")]
    everyone = admin.ok("/api/jobs")
    assert alice_job in [j["id"] for j in everyone]
    assert all(SUMMARY_KEYS | ADMIN_KEYS == set(j) for j in everyone)
    detailed = admin.ok("/api/jobs", params={"user_details": True})
    assert {j["user_email"] for j in detailed if j["id"] == alice_job} == {"alice@example.org"}
    alice_id = alice.ok("/api/whoami")["id"]
    only = admin.ok("/api/jobs", params={"user_id": alice_id})
    assert only and all(j["id"] in {m["id"] for m in mine} for j in only)
    assert alice.ok("/api/jobs", params={"user_id": alice_id}) == mine
    assert_error(bob.get("/api/jobs", params={"user_id": alice_id}), 403, 403006)
    assert_error(bob.get("/api/jobs", params={"user_details": "True"}), 403, 403006)
    assert_error(bob.get("/api/jobs", params={"view": "admin_job_list"}), 403, 403006)
    admin_view = admin.ok("/api/jobs", params={"view": "admin_job_list", "limit": 1})
    assert {"user_email", "handler", "job_runner_name"} <= set(admin_view[0])


def test_list_jobs__state_filters_repeated_comma_separated_and_unknown(
    alice: Galaxy, alice_job: str
) -> None:
    failed = alice.run("sleeper", {"seconds": 0, "exit_code": 1})["jobs"][0]["id"]
    alice.wait(failed)
    ok = {j["id"] for j in alice.ok("/api/jobs?state=ok")}
    assert alice_job in ok and failed not in ok
    error = {j["id"] for j in alice.ok("/api/jobs", params={"state": "error"})}
    assert failed in error and alice_job not in error
    both = {j["id"] for j in alice.ok("/api/jobs", params={"state": ["ok", "error"]})}
    assert both == ok | error
    assert {j["id"] for j in alice.ok("/api/jobs?state=ok,error")} == both
    assert alice.ok("/api/jobs?state=paused") == []
    assert_error(alice.get("/api/jobs?state=failed_hard"), 400, 400008)


def test_list_jobs__tool_and_history_filters(alice: Galaxy, alice_job: str) -> None:
    labelled = alice.run("sleeper", {"seconds": 0}, history_id="abc123")["jobs"][0]["id"]
    alice.wait(labelled)
    sleepers = alice.ok("/api/jobs?tool_id=sleeper")
    assert sleepers and {j["tool_id"] for j in sleepers} == {"sleeper"}
    assert alice_job in [j["id"] for j in alice.ok("/api/jobs?tool_id=sleeper,wordcount")]
    both = alice.ok("/api/jobs", params={"tool_id": ["sleeper", "wordcount"]})
    assert {j["tool_id"] for j in both} == {"sleeper", "wordcount"}
    assert {j["tool_id"] for j in alice.ok("/api/jobs?tool_id_like=word%25")} == {"wordcount"}
    assert alice.ok("/api/jobs?tool_id=nope") == []
    assert [j["id"] for j in alice.ok("/api/jobs?history_id=abc123")] == [labelled]
    assert alice.ok("/api/jobs?workflow_id=f2db41e1fa331b3e") == []
    assert alice.ok("/api/jobs?file_type=whatever&bogus=1")  # unknown parameters are ignored


def test_list_jobs__date_ranges_compare_update_time(alice: Galaxy, alice_job: str) -> None:
    today = datetime.now(UTC).date()
    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)
    assert alice_job in [j["id"] for j in alice.ok(f"/api/jobs?date_range_min={today}")]
    assert alice.ok(f"/api/jobs?date_range_min={tomorrow}") == []
    assert alice.ok(f"/api/jobs?date_range_max={yesterday}") == []
    job = alice.ok(f"/api/jobs/{alice_job}")
    exact = {"date_range_min": job["update_time"], "date_range_max": job["update_time"]}
    assert [j["id"] for j in alice.ok("/api/jobs", params=exact)] == [alice_job]
    assert_error(alice.get("/api/jobs?date_range_min=yesterday"), 400, 400008)


def test_list_jobs__limit_offset_and_order(alice: Galaxy) -> None:
    ids = []
    for _ in range(3):
        job_id = alice.run("sleeper", {"seconds": 0}, history_id="paging")["jobs"][0]["id"]
        alice.wait(job_id)
        ids.append(job_id)
    base = "/api/jobs?history_id=paging"
    newest_first = [j["id"] for j in alice.ok(base + "&order_by=create_time")]
    assert newest_first == ids[::-1]
    page = alice.ok(base + "&limit=1&offset=1&order_by=create_time")
    assert [j["id"] for j in page] == [ids[1]]
    by_update = alice.ok(base)
    times = [j["update_time"] for j in by_update]
    assert times == sorted(times, reverse=True)
    assert len(alice.ok(base + "&limit=2")) == 2
    assert alice.ok(base + "&offset=3") == []
    assert_error(alice.get(base + "&limit=0"), 400, 400008)
    assert_error(alice.get(base + "&offset=-1"), 400, 400008)
    assert_error(alice.get(base + "&limit=ten"), 400, 400008)
    assert_error(alice.get(base + "&order_by=name"), 400, 400008)


# --- jobs: cancel -------------------------------------------------------------------------------


def test_cancel__stops_the_process_answers_true_then_false(
    alice: Galaxy, bob: Galaxy, alice_job: str
) -> None:
    job_id = alice.run("sleeper", {"seconds": 120})["jobs"][0]["id"]

    def pid() -> int | None:
        text = alice.ok(f"/api/jobs/{job_id}?full=true")["stdout"]
        found = re.search(r"pid (\d+) sleeping", text)
        return int(found.group(1)) if found else None

    assert eventually(lambda: pid() is not None)
    process = pid()
    assert process is not None
    assert_error(bob.delete(f"/api/jobs/{job_id}"), 404, 404001)  # not 403: no probing
    response = alice.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 200 and response.json() is True
    assert alice.ok(f"/api/jobs/{job_id}")["state"] in ("deleting", "deleted")
    assert eventually(lambda: alice.ok(f"/api/jobs/{job_id}")["state"] == "deleted")
    assert eventually(lambda: not Path(f"/proc/{process}").exists())
    again = alice.delete(f"/api/jobs/{job_id}/")
    assert again.status_code == 200 and again.json() is False
    finished = alice.delete(f"/api/jobs/{alice_job}")
    assert finished.status_code == 200 and finished.json() is False
    assert alice.ok(f"/api/jobs/{alice_job}")["state"] == "ok"
    assert_error(alice.delete("/api/jobs/0123456789abcdef"), 404, 404001)
    assert_error(alice.delete("/api/jobs/nope"), 400, 400009)


def test_cancel__a_queued_job_becomes_deleted_at_once(daemon: DaemonProcess, alice: Galaxy) -> None:
    # Fill the daemon's slots with sleepers so the last job waits in the queue.
    slots = json.loads(daemon.cli("config", "check", "--json").stdout)["runners"]["local"]["slots"]
    blockers = [alice.run("sleeper", {"seconds": 60})["jobs"][0]["id"] for _ in range(slots)]
    try:
        queued = alice.run("sleeper", {"seconds": 60})["jobs"][0]["id"]
        assert alice.ok(f"/api/jobs/{queued}")["state"] in ("queued", "new")
        assert alice.delete(f"/api/jobs/{queued}").json() is True
        assert alice.ok(f"/api/jobs/{queued}")["state"] == "deleted"
    finally:
        for job_id in blockers:
            alice.delete(f"/api/jobs/{job_id}")
    for job_id in blockers:
        assert eventually(lambda j=job_id: alice.ok(f"/api/jobs/{j}")["state"] == "deleted")


# --- datasets -----------------------------------------------------------------------------------


def test_dataset__shown_downloaded_with_ranges_for_owner_and_admin_only(
    admin: Galaxy, alice: Galaxy, bob: Galaxy, alice_job: str
) -> None:
    upper = dataset_of(alice, alice_job, "outputs", "upper.txt")
    shown = alice.ok(f"/api/datasets/{upper}?hda_ldda=hda")
    assert shown["id"] == upper and shown["name"] == "upper.txt" and shown["state"] == "ok"
    assert shown["file_size"] == 13 and shown["file_ext"] == shown["extension"] == "txt"
    assert shown["creating_job"] == alice_job
    assert shown["download_url"] == f"/api/datasets/{upper}/display"
    assert TIMESTAMP.match(shown["create_time"])
    url = shown["download_url"] + "?to_ext=txt"
    content = alice.get(url)
    assert content.status_code == 200 and content.content == b"ONE TWO THREE"
    assert 'filename="upper.txt"' in content.headers["Content-Disposition"]
    ranged = alice.get(url, headers={"Range": "bytes=4-6"})
    assert ranged.status_code == 206 and ranged.content == b"TWO"
    head = alice.session.head(alice.url + url, timeout=60)
    assert head.status_code == 200 and head.headers["Content-Length"] == "13"
    assert_error(alice.get(url, headers={"Range": "bytes=100-"}), 416, 416001)
    assert admin.get(url).content == b"ONE TWO THREE"
    # Another user's dataset is "not found" (a 403 told that the id exists).
    assert_error(bob.get(f"/api/datasets/{upper}"), 404, 404001)
    assert_error(bob.get(url), 404, 404001)
    assert_error(alice.get("/api/datasets/0123456789abcdef"), 404, 404001)
    assert_error(alice.get("/api/datasets/0123456789abcdef/display"), 404, 404001)
    assert_error(alice.get("/api/datasets/x/display"), 400, 400009)
    assert_error(requests.get(alice.url + url, timeout=60), 403, 403001)
