"""Tests of ``services.tes_doc``: TES 1.1 task documents, states, tag filters, page tokens.

The documents here are what TES clients send (py-tes, cwl-tes, Nextflow, Funnel's
examples); every accepted one is also read back through py-tes's own model, so the
normalized document is one a strict client can hold.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import tes  # py-tes
from tes.utils import unmarshal

from jobferry.errors import ValidationError
from jobferry.services.states import JobState
from jobferry.services.tes_doc import (
    MAX_NAME_CHARS,
    MAX_RESOURCE,
    TASK_KEYS,
    TES_STATES,
    decode_page_token,
    encode_page_token,
    keep_supported_backend_parameters,
    rfc3339,
    tag_filter,
    tags_match,
    task_state,
    unsupported_backend_parameters,
    validate_task,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.engine_independent]


def minimal() -> dict[str, Any]:
    return {"executors": [{"image": "alpine", "command": ["echo", "hello"]}]}


def everything() -> dict[str, Any]:
    """A document using every writable field of tesTask 1.1."""
    return {
        "name": "md5",
        "description": "checksum a file",
        "inputs": [
            {
                "name": "in",
                "description": "the data",
                "url": "file:///data/in.txt",
                "path": "/data/in.txt",
                "type": "FILE",
                "streamable": False,
            },
            {"path": "/data/literal.txt", "content": "hello\n"},
            {"url": "http://127.0.0.1:9/dir", "path": "/data/dir", "type": "DIRECTORY"},
        ],
        "outputs": [
            {"url": "file:///out/md5.txt", "path": "/data/md5.txt"},
            {
                "name": "logs",
                "description": "all logs",
                "url": "file:///out/logs/",
                "path": "/data/logs/*.log",
                "path_prefix": "/data/logs/",
                "type": "FILE",
            },
            {"url": "file:///out/work", "path": "/work", "type": "DIRECTORY"},
        ],
        "resources": {
            "cpu_cores": 2,
            "preemptible": False,
            "ram_gb": 1.5,
            "disk_gb": 10,
            "zones": ["a", "b"],
            "backend_parameters": {"VmSize": "small"},
            "backend_parameters_strict": True,
        },
        "executors": [
            {
                "image": "quay.io/org/tool:1.0",
                "command": ["md5sum", "/data/in.txt"],
                "workdir": "/work",
                "stdin": "/data/literal.txt",
                "stdout": "/data/md5.txt",
                "stderr": "/work/err.txt",
                "env": {"LANG": "C", "EMPTY": ""},
                "ignore_error": True,
            },
            {"image": "alpine", "command": ["true"]},
        ],
        "volumes": ["/vol/A/", "/scratch"],
        "tags": {"WORKFLOW_ID": "cwl-01234", "empty": ""},
    }


def refused(doc: object, field: str, **kwargs: Any) -> ValidationError:
    """Validate *doc*, expecting a refusal whose message starts with *field*."""
    with pytest.raises(ValidationError) as caught:
        validate_task(doc, **kwargs)
    assert caught.value.message.startswith(field + ":"), caught.value.message
    assert field in caught.value.errors
    return caught.value


# --- accepted documents ---------------------------------------------------------------


def test_a_minimal_document_gets_its_defaults_and_nothing_else() -> None:
    assert validate_task(minimal()) == {
        "executors": [{"image": "alpine", "command": ["echo", "hello"], "ignore_error": False}]
    }


def test_every_writable_field_comes_back_unchanged_with_defaults_filled() -> None:
    doc = everything()
    task = validate_task(doc)
    assert list(task) == list(TASK_KEYS)
    assert task["inputs"][1] == {"path": "/data/literal.txt", "type": "FILE", "content": "hello\n"}
    assert task["outputs"][0]["type"] == "FILE"
    assert task["executors"][1]["ignore_error"] is False
    expected = everything()
    expected["inputs"][1]["type"] = "FILE"
    expected["outputs"][0]["type"] = "FILE"
    expected["outputs"][2]["type"] = "DIRECTORY"
    expected["executors"][1]["ignore_error"] = False
    assert task == expected
    assert doc == everything()  # the client's document is not modified


def test_the_result_is_a_copy_that_shares_nothing_with_the_input() -> None:
    doc = everything()
    task = validate_task(doc)
    task["executors"][0]["command"].append("x")
    task["tags"]["new"] = "x"
    task["executors"][0]["env"]["NEW"] = "x"
    assert doc == everything()


def test_read_only_and_unknown_keys_are_dropped_not_refused() -> None:
    doc = minimal()
    doc.update(
        id="client-chosen",
        state="COMPLETE",
        logs=[{"logs": []}],
        creation_time="2020-01-01T00:00:00Z",
        project="old 0.x field",
    )
    doc["executors"][0]["ports"] = [{"container": 80}]  # a 0.x executor field
    assert validate_task(doc) == validate_task(minimal())


def test_null_values_count_as_absent() -> None:
    doc = minimal()
    doc.update(name=None, inputs=None, outputs=None, resources=None, volumes=None, tags=None)
    doc["executors"][0].update(workdir=None, env=None, ignore_error=None, stdout=None)
    assert validate_task(doc) == validate_task(minimal())


def test_resources_default_strictness_only_when_resources_are_given() -> None:
    assert "resources" not in validate_task(minimal())
    doc = minimal() | {"resources": {}}
    assert validate_task(doc)["resources"] == {"backend_parameters_strict": False}


def test_an_integral_float_cpu_count_becomes_an_integer() -> None:
    doc = minimal() | {"resources": {"cpu_cores": 4.0, "ram_gb": 2}}
    resources = validate_task(doc)["resources"]
    assert resources["cpu_cores"] == 4 and isinstance(resources["cpu_cores"], int)
    assert resources["ram_gb"] == 2


def test_content_wins_over_url_and_an_empty_content_beside_a_url_is_dropped() -> None:
    doc = minimal() | {
        "inputs": [
            {"path": "/a", "url": "file:///x", "content": "literal"},
            {"path": "/b", "url": "file:///y", "content": ""},
            {"path": "/c", "content": ""},
        ]
    }
    a, b, c = validate_task(doc)["inputs"]
    assert a["content"] == "literal" and a["url"] == "file:///x"
    assert "content" not in b and b["url"] == "file:///y"
    assert c == {"path": "/c", "type": "FILE", "content": ""}  # an empty file


def test_content_up_to_the_limit_is_accepted_counting_utf8_bytes() -> None:
    big = "é" * (64 * 1024)  # 128 KiB of UTF-8, the minimum the spec asks servers to take
    doc = minimal() | {"inputs": [{"path": "/in", "content": big}]}
    assert validate_task(doc, max_content_bytes=128 * 1024)["inputs"][0]["content"] == big
    error = refused(doc, "inputs[0].content", max_content_bytes=128 * 1024 - 1)
    assert "131072 bytes" in error.message


def test_any_url_scheme_is_accepted_at_create_time() -> None:
    urls = ["s3://bucket/key", "gs://b/k", "ftp://host/f", "/plain/path", "drs://x/y"]
    doc = minimal() | {"inputs": [{"path": f"/in{n}", "url": u} for n, u in enumerate(urls)]}
    assert [item["url"] for item in validate_task(doc)["inputs"]] == urls


def test_a_wildcard_output_with_its_prefix_is_accepted() -> None:
    for path, prefix in [("/d/*.txt", "/d/"), ("/d/?/x", "/d"), ("/d/[ab]c", "/d/")]:
        doc = minimal() | {"outputs": [{"url": "file:///o/", "path": path, "path_prefix": prefix}]}
        assert validate_task(doc)["outputs"][0]["path_prefix"] == prefix


def test_a_path_prefix_without_wildcards_is_kept_and_not_checked() -> None:
    doc = minimal() | {"outputs": [{"url": "file:///o", "path": "/d/f", "path_prefix": "/other"}]}
    assert validate_task(doc)["outputs"][0]["path_prefix"] == "/other"


def test_workdir_may_be_the_root_but_inputs_may_not() -> None:
    doc = minimal()
    doc["executors"][0]["workdir"] = "/"
    assert validate_task(doc)["executors"][0]["workdir"] == "/"
    refused(minimal() | {"inputs": [{"path": "/", "url": "file:///x"}]}, "inputs[0].path")


def test_every_accepted_document_reads_back_through_py_tes() -> None:
    for doc in (minimal(), everything()):
        task = validate_task(doc)
        model = unmarshal(task, tes.Task)
        assert model.is_valid() == (True, None)
        assert model.as_dict() == task


# --- refused documents ----------------------------------------------------------------


@pytest.mark.parametrize("doc", [None, [], "task", 3, True])
def test_a_document_that_is_not_an_object_is_refused(doc: object) -> None:
    refused(doc, "task")


def test_a_document_without_executors_is_refused() -> None:
    refused({}, "executors")
    refused({"executors": []}, "executors")
    refused({"executors": {"image": "alpine"}}, "executors")
    refused({"executors": [None]}, "executors[0]")


@pytest.mark.parametrize(
    ("executor", "field"),
    [
        ({"command": ["true"]}, "executors[0].image"),
        ({"image": "", "command": ["true"]}, "executors[0].image"),
        ({"image": 3, "command": ["true"]}, "executors[0].image"),
        ({"image": "--privileged", "command": ["true"]}, "executors[0].image"),
        ({"image": "alpine latest", "command": ["true"]}, "executors[0].image"),
        ({"image": "alpine"}, "executors[0].command"),
        ({"image": "alpine", "command": []}, "executors[0].command"),
        ({"image": "alpine", "command": "echo hello"}, "executors[0].command"),
        ({"image": "alpine", "command": ["echo", 1]}, "executors[0].command[1]"),
        ({"image": "alpine", "command": ["echo", "a\x00b"]}, "executors[0].command[1]"),
        ({"image": "alpine", "command": ["x"], "workdir": "work"}, "executors[0].workdir"),
        ({"image": "alpine", "command": ["x"], "stdin": "in.txt"}, "executors[0].stdin"),
        ({"image": "alpine", "command": ["x"], "stdout": "./o"}, "executors[0].stdout"),
        ({"image": "alpine", "command": ["x"], "stderr": ""}, "executors[0].stderr"),
        ({"image": "alpine", "command": ["x"], "stdout": "/"}, "executors[0].stdout"),
        ({"image": "alpine", "command": ["x"], "env": ["A=1"]}, "executors[0].env"),
        ({"image": "alpine", "command": ["x"], "env": {"A": 1}}, "executors[0].env.A"),
        ({"image": "alpine", "command": ["x"], "env": {"A=B": "1"}}, "executors[0].env"),
        ({"image": "alpine", "command": ["x"], "env": {"": "1"}}, "executors[0].env"),
        ({"image": "alpine", "command": ["x"], "ignore_error": "yes"}, "executors[0].ignore_error"),
        ({"image": "alpine", "command": ["x"], "ignore_error": 1}, "executors[0].ignore_error"),
    ],
)
def test_a_bad_executor_is_refused_naming_its_field(executor: dict[str, Any], field: str) -> None:
    refused({"executors": [executor]}, field)


def test_the_failing_executor_is_named_by_its_index() -> None:
    doc = minimal()
    doc["executors"].append({"image": "alpine", "command": ["x"], "workdir": "rel"})
    error = refused(doc, "executors[1].workdir")
    assert error.message == "executors[1].workdir: must be an absolute path"


@pytest.mark.parametrize(
    "path",
    ["relative", "/a/../etc", "/..", "/a/..", "/a:/b", "/a\nb", "/a\x00b", "", "//"],
)
def test_container_paths_that_could_escape_or_break_a_mount_are_refused(path: str) -> None:
    refused(minimal() | {"volumes": [path]}, "volumes[0]")
    refused(minimal() | {"inputs": [{"path": path, "url": "file:///x"}]}, "inputs[0].path")
    refused(minimal() | {"outputs": [{"path": path, "url": "file:///x"}]}, "outputs[0].path")


def test_dots_inside_names_are_not_parent_components() -> None:
    doc = minimal() | {"volumes": ["/a/..b", "/a/b..", "/a/./b"]}
    assert validate_task(doc)["volumes"] == ["/a/..b", "/a/b..", "/a/./b"]


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"path": "/in"}, "inputs[0]"),
        ({"url": "file:///x"}, "inputs[0].path"),
        ({"path": "/in", "url": ""}, "inputs[0].url"),
        ({"path": "/in", "url": 5}, "inputs[0].url"),
        ({"path": "/in", "content": 5}, "inputs[0].content"),
        ({"path": "/in", "content": "x", "type": "DIRECTORY"}, "inputs[0].content"),
        ({"path": "/in", "url": "file:///x", "type": "file"}, "inputs[0].type"),
        ({"path": "/in", "url": "file:///x", "streamable": "no"}, "inputs[0].streamable"),
        ({"path": "/in", "url": "file:///x", "name": 1}, "inputs[0].name"),
        ({"path": "/in", "content": "\ud800"}, "inputs[0].content"),
        ("file:///x", "inputs[0]"),
    ],
)
def test_a_bad_input_is_refused_naming_its_field(item: object, field: str) -> None:
    refused(minimal() | {"inputs": [item]}, field)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"path": "/out"}, "outputs[0].url"),
        ({"url": "file:///o"}, "outputs[0].path"),
        ({"url": "file:///o", "path": "/d/*.txt"}, "outputs[0].path_prefix"),
        ({"url": "file:///o", "path": "/d/*.txt", "path_prefix": ""}, "outputs[0].path_prefix"),
        ({"url": "file:///o", "path": "/d/?", "path_prefix": "/e/"}, "outputs[0].path_prefix"),
        ({"url": "file:///o", "path": "/d/[a]", "path_prefix": "/d/["}, "outputs[0].path_prefix"),
        ({"url": "file:///o", "path": "/d/*", "path_prefix": 3}, "outputs[0].path_prefix"),
        ({"url": "file:///o", "path": "/d", "type": "LINK"}, "outputs[0].type"),
        ({"url": ["file:///o"], "path": "/d"}, "outputs[0].url"),
    ],
)
def test_a_bad_output_is_refused_naming_its_field(item: object, field: str) -> None:
    refused(minimal() | {"outputs": [item]}, field)


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"cpu_cores": 0}, "resources.cpu_cores"),
        ({"cpu_cores": -1}, "resources.cpu_cores"),
        ({"cpu_cores": 1.5}, "resources.cpu_cores"),
        ({"cpu_cores": "2"}, "resources.cpu_cores"),
        ({"cpu_cores": True}, "resources.cpu_cores"),
        ({"ram_gb": 0}, "resources.ram_gb"),
        ({"ram_gb": -0.5}, "resources.ram_gb"),
        ({"ram_gb": "1"}, "resources.ram_gb"),
        ({"ram_gb": float("inf")}, "resources.ram_gb"),
        ({"ram_gb": float("nan")}, "resources.ram_gb"),
        ({"disk_gb": 0.0}, "resources.disk_gb"),
        ({"disk_gb": False}, "resources.disk_gb"),
        ({"preemptible": "false"}, "resources.preemptible"),
        ({"zones": "us-west-1"}, "resources.zones"),
        ({"zones": [1]}, "resources.zones[0]"),
        ({"backend_parameters": {"VmSize": 4}}, "resources.backend_parameters.VmSize"),
        ({"backend_parameters": ["VmSize"]}, "resources.backend_parameters"),
        ({"backend_parameters_strict": "true"}, "resources.backend_parameters_strict"),
        ({"cpu_cores": MAX_RESOURCE + 1}, "resources.cpu_cores"),
        ({"cpu_cores": 10**30}, "resources.cpu_cores"),
        ({"ram_gb": 1e300}, "resources.ram_gb"),
        ({"disk_gb": MAX_RESOURCE + 0.5}, "resources.disk_gb"),
        ([], "resources"),
    ],
)
def test_bad_resources_are_refused_naming_the_field(resources: object, field: str) -> None:
    refused(minimal() | {"resources": resources}, field)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": "x" * (MAX_NAME_CHARS + 1)}, "name"),
        ({"description": ["a"]}, "description"),
        ({"tags": ["a"]}, "tags"),
        ({"tags": {"a": 1}}, "tags.a"),
        ({"tags": {"a": None}}, "tags.a"),
        ({"tags": {"a": "x\x00"}}, "tags.a"),
        ({"volumes": "/vol"}, "volumes"),
        ({"volumes": [3]}, "volumes[0]"),
        ({"inputs": {"path": "/x"}}, "inputs"),
        ({"outputs": "file:///x"}, "outputs"),
    ],
)
def test_wrong_types_at_the_top_level_are_refused(extra: dict[str, Any], field: str) -> None:
    refused(minimal() | extra, field)


def test_a_name_at_the_limit_is_accepted() -> None:
    doc = minimal() | {"name": "x" * MAX_NAME_CHARS}
    assert validate_task(doc)["name"] == "x" * MAX_NAME_CHARS


# --- backend parameters ---------------------------------------------------------------


def test_unsupported_backend_parameters_are_listed_sorted_and_case_insensitively() -> None:
    doc = minimal() | {
        "resources": {"backend_parameters": {"vmsize": "a", "Zeta": "1", "Alpha": "2"}}
    }
    task = validate_task(doc)
    assert unsupported_backend_parameters(task, ["VmSize"]) == ["Alpha", "Zeta"]
    assert unsupported_backend_parameters(task, ["VMSIZE", "alpha", "zeta"]) == []
    assert unsupported_backend_parameters(validate_task(minimal()), []) == []
    assert unsupported_backend_parameters({"resources": {}}, []) == []


def test_resources_at_the_upper_bound_are_accepted() -> None:
    top = {"cpu_cores": MAX_RESOURCE, "ram_gb": MAX_RESOURCE, "disk_gb": float(MAX_RESOURCE)}
    resources = validate_task(minimal() | {"resources": top})["resources"]
    assert resources == top | {"backend_parameters_strict": False}
    assert resources["ram_gb"] * 1024 < 2**31  # the job's memory_mb column


def test_unsupported_backend_parameters_are_not_kept() -> None:
    params = {"VmSize": "a", "other": "b"}
    task = validate_task(minimal() | {"resources": {"backend_parameters": params}})
    kept = keep_supported_backend_parameters(task, ["vmsize"])
    assert kept["resources"]["backend_parameters"] == {"VmSize": "a"}
    assert task["resources"]["backend_parameters"] == params  # a copy
    assert kept["executors"] == task["executors"]
    assert keep_supported_backend_parameters(validate_task(minimal()), []) == validate_task(
        minimal()
    )


# --- states ---------------------------------------------------------------------------


def test_tes_states_are_the_specifications_eleven() -> None:
    assert len(set(TES_STATES)) == 11
    assert set(TES_STATES) >= {"QUEUED", "COMPLETE", "EXECUTOR_ERROR", "CANCELING", "PREEMPTED"}


@pytest.mark.parametrize(
    ("job_state", "exit_code", "phase", "expected"),
    [
        (JobState.NEW, None, None, "QUEUED"),
        (JobState.QUEUED, None, None, "QUEUED"),
        (JobState.RUNNING, None, None, "QUEUED"),  # e.g. pending in Slurm
        (JobState.RUNNING, None, "INITIALIZING", "INITIALIZING"),
        (JobState.RUNNING, None, "RUNNING", "RUNNING"),
        (JobState.RUNNING, None, "COMPLETE", "RUNNING"),  # the wrapper has not ended yet
        (JobState.DELETING, None, "RUNNING", "CANCELING"),
        (JobState.DELETED, None, None, "CANCELED"),
        (JobState.DELETED, 143, "CANCELED", "CANCELED"),
        (JobState.OK, 0, "COMPLETE", "COMPLETE"),
        (JobState.ERROR, 1, "EXECUTOR_ERROR", "EXECUTOR_ERROR"),
        (JobState.ERROR, 1, "SYSTEM_ERROR", "SYSTEM_ERROR"),
        (JobState.ERROR, 2, "SYSTEM_ERROR", "SYSTEM_ERROR"),
        (JobState.ERROR, 137, "RUNNING", "SYSTEM_ERROR"),  # killed (out of memory)
        (JobState.ERROR, 1, "RUNNING", "SYSTEM_ERROR"),
        (JobState.ERROR, None, None, "SYSTEM_ERROR"),  # never started (lost node, bad image)
        (JobState.ERROR, 143, "CANCELED", "SYSTEM_ERROR"),  # stopped, but not by a cancel
        ("something-new", None, None, "UNKNOWN"),
    ],
)
def test_task_state_maps_the_job_state_and_the_programs_phase(
    job_state: str, exit_code: int | None, phase: str | None, expected: str
) -> None:
    assert task_state(job_state, exit_code, phase) == expected
    assert task_state(str(job_state), exit_code, phase) == expected  # stored strings too
    assert expected in TES_STATES


# --- tag filters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "values", "tags", "match"),
    [  # the specification's truth table, row by row
        (["foo"], ["bar"], {"foo": "bar"}, True),
        (["foo"], ["bar"], {"foo": "bat"}, False),
        (["foo"], [""], {"foo": ""}, True),
        (["foo", "baz"], ["bar", "bat"], {"foo": "bar", "baz": "bat"}, True),
        (["foo"], ["bar"], {"foo": "bar", "baz": "bat"}, True),
        (["foo", "baz"], ["bar", "bat"], {"foo": "bar"}, False),
        (["foo"], [""], {"foo": "bar"}, True),
        (["foo"], [""], {}, False),
        # a key without a value at all (?tag_key=foo) is {"foo": ""}
        (["foo"], [], {"foo": "anything"}, True),
        (["foo"], [], {}, False),
        (["foo", "baz"], ["bar"], {"foo": "bar", "baz": "x"}, True),
        (["foo", "baz"], ["bar"], {"foo": "bar"}, False),
        ([], [], {}, True),
        ([], [], {"a": "b"}, True),
    ],
)
def test_tags_match_follows_the_specifications_truth_table(
    keys: list[str], values: list[str], tags: dict[str, str], match: bool
) -> None:
    assert tags_match(tags, keys, values) is match


def test_tag_filter_zips_keys_and_values_in_order() -> None:
    assert tag_filter(["a", "b", "c"], ["1", ""]) == {"a": "1", "b": None, "c": None}
    assert tag_filter([], []) == {}


def test_a_key_repeated_merges_when_the_values_agree_and_is_refused_otherwise() -> None:
    assert tag_filter(["a", "a"], ["", "1"]) == {"a": "1"}
    assert tag_filter(["a", "a"], ["1", ""]) == {"a": "1"}
    assert tag_filter(["a", "a"], ["1", "1"]) == {"a": "1"}
    with pytest.raises(ValidationError, match="tag_key"):
        tag_filter(["a", "a"], ["1", "2"])


def test_more_tag_values_than_keys_is_refused() -> None:
    with pytest.raises(ValidationError, match="tag_value"):
        tag_filter(["a"], ["1", "2"])
    with pytest.raises(ValidationError, match="tag_value"):
        tags_match({"a": "1"}, [], ["1"])


# --- page tokens and times ------------------------------------------------------------


def test_a_page_token_round_trips_in_utc_and_is_url_safe() -> None:
    moment = datetime(2026, 12, 3, 11, 40, 0, 123456, tzinfo=UTC)
    token = encode_page_token(moment, "0b9c7f3e-aaaa-bbbb-cccc-0123456789ab")
    assert all(c.isalnum() or c in "-_" for c in token)
    assert decode_page_token(token) == (moment, "0b9c7f3e-aaaa-bbbb-cccc-0123456789ab")


def test_a_naive_time_is_taken_as_utc_and_other_zones_are_converted() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    assert decode_page_token(encode_page_token(naive, "j"))[0] == naive.replace(tzinfo=UTC)
    paris = datetime(2026, 1, 2, 4, 4, 5, 6, tzinfo=timezone(timedelta(hours=1)))
    assert decode_page_token(encode_page_token(paris, "j"))[0] == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not base64 !",
        "bm90IGEgdG9rZW4",  # "not a token"
        encode_page_token(datetime(2026, 1, 1), "j")[:-6],
        "dDF8bm90IGEgdGltZXxq",  # "t1|not a time|j"
        "dDF8MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHw",  # "t1|2026-01-01T00:00:00+00:00|"
        "dDJ8MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHxq",  # version t2
        "_w",  # not UTF-8
        "A" * 600,
    ],
)
def test_a_damaged_page_token_is_a_validation_error(token: str) -> None:
    with pytest.raises(ValidationError, match="page_token"):
        decode_page_token(token)


def test_rfc3339_is_utc_with_microseconds_and_a_z() -> None:
    assert rfc3339(None) is None
    assert rfc3339(datetime(2026, 12, 3, 11, 40, tzinfo=UTC)) == "2026-12-03T11:40:00.000000Z"
    assert rfc3339(datetime(2026, 12, 3, 11, 40, 0, 123456)) == "2026-12-03T11:40:00.123456Z"
    east = datetime(2026, 12, 3, 13, 40, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(east) == "2026-12-03T11:40:00.000000Z"
    assert datetime.fromisoformat(rfc3339(east) or "") == east


def test_validation_does_not_depend_on_the_input_being_a_plain_dict() -> None:
    class Doc(dict[str, Any]):
        pass

    doc = Doc(copy.deepcopy(everything()))
    task = validate_task(doc)
    assert type(task) is dict and task == validate_task(everything())
