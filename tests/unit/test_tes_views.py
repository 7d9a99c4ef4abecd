"""Tests of ``services.tes_views``: a task in the MINIMAL, BASIC and FULL views, service-info.

py-tes builds its models from a response's keys and refuses any key or state it does
not know, so every rendered task and the service-info object are read back through
its ``unmarshal`` here, as ``tes.HTTPClient`` would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import tes  # py-tes
from tes.utils import unmarshal

from jobferry.errors import ValidationError
from jobferry.services.tes_doc import TES_STATES, validate_task
from jobferry.services.tes_views import (
    SERVICE_ID,
    TaskRecord,
    attempt_notes,
    parse_view,
    render,
    service_info,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.engine_independent]

CREATED = datetime(2026, 12, 3, 11, 40, 0, 123456, tzinfo=UTC)
VIEWS = ("MINIMAL", "BASIC", "FULL")


def document() -> dict[str, Any]:
    return validate_task(
        {
            "name": "md5",
            "description": "checksum",
            "inputs": [
                {"path": "/data/in.txt", "content": "secret literal"},
                {"path": "/data/ref", "url": "file:///refs/ref", "type": "DIRECTORY"},
            ],
            "outputs": [
                {"path": "/data/out/*.txt", "path_prefix": "/data/out/", "url": "file:///o/"}
            ],
            "resources": {"cpu_cores": 1, "ram_gb": 0.5, "backend_parameters": {"a": "b"}},
            "executors": [
                {"image": "alpine", "command": ["md5sum", "/data/in.txt"], "env": {"A": "1"}},
                {"image": "alpine", "command": ["false"], "ignore_error": True},
            ],
            "volumes": ["/vol"],
            "tags": {"project": "x"},
        }
    )


def finished_attempt() -> dict[str, Any]:
    """A state file as the task program writes it at the end, plus the service's metadata."""
    return {
        "phase": "COMPLETE",
        "start_time": "2026-12-03T11:40:01.000000Z",
        "end_time": "2026-12-03T11:40:09.500000+00:00",
        "logs": [
            {
                "start_time": "2026-12-03T11:40:02Z",
                "end_time": "2026-12-03T11:40:03Z",
                "exit_code": 0,
                "stdout": "d41d8cd9  /data/in.txt\n",
                "stderr": "",
            },
            {
                "start_time": "2026-12-03T11:40:04Z",
                "end_time": "2026-12-03T11:40:05Z",
                "exit_code": 1,
                "stdout": "",
                "stderr": "failed, ignored\n",
            },
        ],
        "outputs": [{"url": "file:///o/a.txt", "path": "/data/out/a.txt", "size_bytes": "33"}],
        "system_logs": ["staged 2 inputs"],
        "metadata": {"node": "node-1", "attempt": 1},
    }


def record(**changes: Any) -> TaskRecord:
    fields: dict[str, Any] = {
        "id": "0b9c7f3e-1111-2222-3333-0123456789ab",
        "state": "COMPLETE",
        "doc": document(),
        "creation_time": CREATED,
        "attempts": [finished_attempt()],
    }
    fields.update(changes)
    return TaskRecord(**fields)


def through_py_tes(rendered: dict[str, Any]) -> tes.Task:
    """*rendered* as JSON on the wire, read by py-tes (raises UnmarshalError on a bad key)."""
    return unmarshal(json.dumps(rendered), tes.Task)


def has_none(value: object) -> bool:
    if isinstance(value, dict):
        return any(v is None or has_none(v) for v in value.values())
    if isinstance(value, list):
        return any(v is None or has_none(v) for v in value)
    return False


# --- views ----------------------------------------------------------------------------


def test_minimal_is_the_id_and_the_state_only() -> None:
    assert render(record(), "MINIMAL") == {
        "id": "0b9c7f3e-1111-2222-3333-0123456789ab",
        "state": "COMPLETE",
    }


def test_basic_returns_the_submitted_document_without_the_bulky_fields() -> None:
    out = render(record(), "BASIC")
    doc = document()
    for key in ("name", "description", "outputs", "resources", "executors", "volumes", "tags"):
        assert out[key] == doc[key], key
    assert out["inputs"] == [
        {"path": "/data/in.txt", "type": "FILE"},  # no content
        {"path": "/data/ref", "url": "file:///refs/ref", "type": "DIRECTORY"},
    ]
    assert out["creation_time"] == "2026-12-03T11:40:00.123456Z"
    (log,) = out["logs"]
    assert "system_logs" not in log
    assert [sorted(e) for e in log["logs"]] == [["end_time", "exit_code", "start_time"]] * 2
    assert log["outputs"] == [
        {"url": "file:///o/a.txt", "path": "/data/out/a.txt", "size_bytes": "33"}
    ]
    assert log["metadata"] == {"node": "node-1", "attempt": "1"}


def test_full_returns_everything() -> None:
    out = render(record(), "FULL")
    assert out["inputs"][0]["content"] == "secret literal"
    (log,) = out["logs"]
    assert log["system_logs"] == ["staged 2 inputs"]
    assert log["logs"][0]["stdout"] == "d41d8cd9  /data/in.txt\n"
    assert log["logs"][1] == {
        "start_time": "2026-12-03T11:40:04.000000Z",
        "end_time": "2026-12-03T11:40:05.000000Z",
        "stdout": "",
        "stderr": "failed, ignored\n",
        "exit_code": 1,
    }
    assert log["start_time"] == "2026-12-03T11:40:01.000000Z"
    assert log["end_time"] == "2026-12-03T11:40:09.500000Z"


def test_rendering_does_not_modify_the_record() -> None:
    task = record()
    render(task, "BASIC")["executors"][0]["command"].append("x")
    assert task.doc == document()
    assert task.doc["inputs"][0]["content"] == "secret literal"


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_reads_back_through_py_tes(view: str) -> None:
    out = render(record(), view)
    model = through_py_tes(out)
    assert model.id == "0b9c7f3e-1111-2222-3333-0123456789ab" and model.state == "COMPLETE"
    assert not has_none(out)
    if view == "MINIMAL":
        return
    assert model.creation_time == CREATED
    assert model.executors[0].command == ["md5sum", "/data/in.txt"]
    assert model.logs[0].logs[1].exit_code == 1
    assert model.logs[0].outputs[0].size_bytes == 33
    if view == "FULL":  # BASIC drops a literal input's content, which py-tes would require
        assert model.is_valid() == (True, None)


@pytest.mark.parametrize("state", TES_STATES)
def test_every_state_reads_back_through_py_tes(state: str) -> None:
    for view in VIEWS:
        assert through_py_tes(render(record(state=state), view)).state == state


def test_a_state_outside_the_specification_is_sent_as_unknown() -> None:
    assert render(record(state="deleting"), "MINIMAL")["state"] == "UNKNOWN"


def test_a_queued_task_has_no_logs_and_reads_back() -> None:
    for view in ("BASIC", "FULL"):
        out = render(record(state="QUEUED", attempts=[]), view)
        assert out["logs"] == []
        through_py_tes(out)


def test_an_attempt_without_a_state_file_is_an_empty_task_log() -> None:
    attempts: list[dict[str, Any]] = [{}, {"metadata": {}}]
    out = render(record(state="INITIALIZING", attempts=attempts), "FULL")
    assert out["logs"] == [
        {"logs": [], "outputs": [], "system_logs": []},
        {"logs": [], "outputs": [], "system_logs": []},
    ]
    through_py_tes(out)


def test_attempts_are_rendered_in_order() -> None:
    first = finished_attempt() | {"phase": "SYSTEM_ERROR", "metadata": {"attempt": "1"}}
    second = finished_attempt() | {"metadata": {"attempt": "2"}}
    out = render(record(attempts=[first, second]), "BASIC")
    assert [log["metadata"]["attempt"] for log in out["logs"]] == ["1", "2"]


def test_a_minimal_document_renders_without_optional_keys() -> None:
    doc = validate_task({"executors": [{"image": "alpine", "command": ["true"]}]})
    out = render(record(doc=doc, attempts=[]), "FULL")
    assert sorted(out) == ["creation_time", "executors", "id", "logs", "state"]
    through_py_tes(out)


def test_a_naive_creation_time_is_taken_as_utc() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    assert render(record(creation_time=naive), "BASIC")["creation_time"] == (
        "2026-01-02T03:04:05.000000Z"
    )


# --- defensive reading of state files --------------------------------------------------


def test_a_damaged_state_file_never_yields_a_key_or_type_py_tes_refuses() -> None:
    attempt: dict[str, Any] = {
        "phase": "RUNNING",
        "start_time": "yesterday",
        "end_time": None,
        "unknown_key": "x",
        "logs": [
            {"start_time": "2026-12-03T11:40:02Z", "exit_code": 0, "extra": 1, "stdout": 5},
            {"start_time": "2026-12-03T11:40:04Z"},  # no exit code yet
            {"exit_code": "1"},
            {"exit_code": True},
            "not a log",
        ],
        "outputs": [
            {"url": "file:///o/a", "path": "/a", "size_bytes": 12},
            {"url": "file:///o/b", "path": "/b", "size_bytes": "-3"},
            {"url": "file:///o/c", "path": "/c"},
            {"url": None, "path": "/d", "size_bytes": "1"},
            ["x"],
        ],
        "system_logs": ["kept", 3, None],
        "metadata": {"node": "n1", "when": CREATED, "ok": True, "list": [1], "none": None, 4: "x"},
    }
    out = render(record(state="RUNNING", attempts=[attempt]), "FULL")
    (log,) = out["logs"]
    assert log == {
        "logs": [{"start_time": "2026-12-03T11:40:02.000000Z", "exit_code": 0}],
        "metadata": {"node": "n1", "when": "2026-12-03T11:40:00.123456Z", "ok": "true"},
        "outputs": [{"url": "file:///o/a", "path": "/a", "size_bytes": "12"}],
        "system_logs": ["kept"],
    }
    through_py_tes(out)


def test_times_from_other_zones_and_datetimes_are_sent_in_utc() -> None:
    east = datetime(2026, 12, 3, 13, 40, tzinfo=timezone(timedelta(hours=2)))
    attempt = {"start_time": east, "end_time": "2026-12-03T13:41:00+02:00"}
    (log,) = render(record(attempts=[attempt]), "BASIC")["logs"]
    assert log["start_time"] == "2026-12-03T11:40:00.000000Z"
    assert log["end_time"] == "2026-12-03T11:41:00.000000Z"


# --- the view parameter ---------------------------------------------------------------


def test_parse_view_defaults_to_minimal_and_ignores_case() -> None:
    assert parse_view(None) == "MINIMAL"
    assert parse_view("") == "MINIMAL"
    assert parse_view("basic") == "BASIC"
    assert parse_view("Full") == "FULL"


@pytest.mark.parametrize("view", ["EVERYTHING", "MINIMAL ", "0"])
def test_an_unknown_view_is_a_validation_error(view: str) -> None:
    with pytest.raises(ValidationError, match="view"):
        render(record(), view)


# --- service info ---------------------------------------------------------------------


def test_service_info_has_the_required_fields_and_reads_back_through_py_tes() -> None:
    info = service_info(
        name="jobferry TES",
        version="0.1.0",
        storage=["file:///srv/data"],
        backend_parameters=["destination"],
        organization_url="http://127.0.0.1:8080/",
    )
    assert info == {
        "id": SERVICE_ID,
        "name": "jobferry TES",
        "type": {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"},
        "organization": {"name": "jobferry", "url": "http://127.0.0.1:8080/"},
        "version": "0.1.0",
        "storage": ["file:///srv/data"],
        "tesResources_backend_parameters": ["destination"],
    }
    model = unmarshal(json.dumps(info), tes.ServiceInfo)
    assert model.tes_resources_backend_parameters == ["destination"]
    assert model.type["artifact"] == "tes"


def test_service_info_optional_fields_read_back_through_py_tes() -> None:
    info = service_info(
        name="n",
        version="1",
        storage=[],
        backend_parameters=[],
        description="d",
        documentation_url="http://127.0.0.1/docs",
        contact_url="mailto:ops@example.org",
        environment="test",
        created_at=CREATED,
        updated_at=CREATED,
    )
    assert info["createdAt"] == "2026-12-03T11:40:00.123456Z"
    model = unmarshal(json.dumps(info), tes.ServiceInfo)
    assert model.documentation_url == "http://127.0.0.1/docs"
    assert model.contact_url == "mailto:ops@example.org"
    assert model.storage == [] and model.environment == "test"
    assert not has_none(info)


@pytest.mark.parametrize("view", VIEWS)
def test_a_list_page_of_rendered_tasks_reads_back_through_py_tes(view: str) -> None:
    page = {
        "tasks": [render(record(), view), render(record(state="QUEUED", attempts=[]), view)],
        "next_page_token": "dDF8eA",
    }
    model = unmarshal(json.dumps(page), tes.ListTasksResponse)
    assert [task.state for task in model.tasks] == ["COMPLETE", "QUEUED"]


def test_notes__plain_strings_are_every_attempts_a_tagged_one_only_its_attempts() -> None:
    """``tes_tasks.notes``: lines known at create are task-wide; a requeue's note (tagged
    with its attempt, ``tes_end.record_requeue``) says why that attempt ended and where."""
    notes: list[Any] = [
        "backend parameters ignored (not supported): x",
        {"attempt": 1, "node": "n1", "log": "attempt 1 ended: requeued: node n1 died"},
        {"attempt": 2, "log": "attempt 2 ended: requeued: never started"},
        {"attempt": True, "node": "bool", "log": "not attempt 1"},  # True is no attempt number
        {"attempt": "1", "node": "text", "log": "not attempt 1 either"},
        {"attempt": 1, "node": 7, "log": None},  # a foreign entry's wrong types are left out
        3,
    ]
    first = attempt_notes(notes, 1)
    assert first.shared == ["backend parameters ignored (not supported): x"]
    assert first.ended == ["attempt 1 ended: requeued: node n1 died"]
    assert first.metadata == {"node": "n1"}
    second = attempt_notes(notes, 2)
    assert second.shared == first.shared
    assert second.ended == ["attempt 2 ended: requeued: never started"]
    assert second.metadata == {}
    third = attempt_notes(notes, 3)
    assert (third.ended, third.metadata) == ([], {})
    assert attempt_notes(None, 1) == attempt_notes({"attempt": 1}, 1) == attempt_notes([], 1)
