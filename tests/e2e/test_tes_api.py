"""The GA4GH TES face end to end: py-tes (the reference Python client) against a real daemon.

One daemon serves the module: its TES tasks go to a Docker destination (``dock``),
run by the task program through the local runner, each executor a container of the
local test image (never pulled). A second Docker destination, ``held``, runs one
task at a time (``max_concurrent: 1``), so a task sent there behind a sleeping one
stays queued: that is how a queued task's cancel is checked. Tasks choose it with
the ``destination`` backend parameter.

Every test touches the store, so all run on both engines.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import tes

from tests.e2e.tes_support import remove_task_containers, task_job_ids
from tests.helpers import DEADLINE_S, DaemonProcess
from tests.services import PYTHON_IMAGE, require

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ALICE_PASSWORD = "tes alice horse 7"
ENDED = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
#: py-tes wants whole seconds.
TIMEOUT = int(DEADLINE_S)


@dataclass
class Setup:
    daemon: DaemonProcess
    admin_key: str
    alice_key: str
    bob_key: str

    files: Path

    def client(self, key: str) -> tes.HTTPClient:
        return tes.HTTPClient(self.daemon.url, token=key, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require("docker")
    base = tmp_path_factory.mktemp("tes")
    (base / "files").mkdir()
    config = {
        "node": {"cores": 8},
        "runners": {"local": {"slots": 8}, "docker": {"enabled": True, "slots": 8}},
        "destinations": {
            "local": {"runner": "local"},
            "dock": {"runner": "docker", "image": PYTHON_IMAGE},
            "held": {"runner": "docker", "image": PYTHON_IMAGE, "max_concurrent": 1},
        },
        "tes": {"enabled": True, "destination": "dock", "file_roots": [str(base / "files")]},
    }
    daemon = DaemonProcess(base / "data", config).start()
    try:
        alice = daemon.cli("user", "create", "alice").stdout.strip()
        daemon.cli("user", "passwd", "alice", input=ALICE_PASSWORD + "\n")
        bob = daemon.cli("user", "create", "bob").stdout.strip()
        yield Setup(daemon, daemon.admin_key, alice, bob, base / "files")
    finally:
        ids = task_job_ids(daemon)
        daemon.stop()
        # The executors' containers are named jobferry-<job id>-<attempt>-<index>. Only
        # this daemon's: the other engine's suite may run containers at the same time.
        remove_task_containers(ids)


def task(name: str, argv: list[str], **extra: Any) -> tes.Task:
    return tes.Task(
        name=name,
        executors=[tes.Executor(image=PYTHON_IMAGE, command=argv)],
        **extra,
    )


def create(client: tes.HTTPClient, doc: tes.Task) -> str:
    return str(client.create_task(doc))  # py-tes returns the id


def listed(setup: Setup, key: str, **params: Any) -> tuple[list[str], str | None]:
    """``GET /tasks`` with the filters py-tes does not send: the ids, and the token."""
    response = requests.get(
        setup.daemon.url + "/ga4gh/tes/v1/tasks",
        params=params,
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    body = tes.client.unmarshal(response.json(), tes.ListTasksResponse)  # py-tes's strict model
    return [t.id for t in body.tasks or []], body.next_page_token


def wait_state(client: tes.HTTPClient, task_id: str, states: set[str]) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        state = client.get_task(task_id, view="MINIMAL").state
        if state in states:
            return str(state)
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never reached {states}")


def test_service_info__is_open_and_names_the_tes_type(setup: Setup) -> None:
    info = tes.HTTPClient(setup.daemon.url).get_service_info()
    assert info.type == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}
    assert "destination" in (info.tes_resources_backend_parameters or [])
    # The same at Funnel's base path.
    assert requests.get(setup.daemon.url + "/v1/service-info", timeout=TIMEOUT).ok


def test_task__runs_in_a_container_and_reads_back_in_every_view(setup: Setup) -> None:
    client = setup.client(setup.alice_key)
    task_id = create(
        client, task("hello", ["sh", "-c", "echo hi; echo oops >&2"], tags={"suite": "e2e"})
    )
    client.wait(task_id, timeout=TIMEOUT)

    minimal = client.get_task(task_id, view="MINIMAL")
    assert minimal.id == task_id and minimal.state == "COMPLETE"
    assert minimal.executors is None  # MINIMAL: id and state only

    basic = client.get_task(task_id, view="BASIC")
    assert basic.name == "hello" and basic.tags == {"suite": "e2e"}
    assert basic.executors[0].image == PYTHON_IMAGE
    assert basic.executors[0].command == ["sh", "-c", "echo hi; echo oops >&2"]
    assert basic.creation_time is not None
    log = basic.logs[0].logs[0]
    assert log.exit_code == 0 and log.stdout is None  # BASIC: no stdout/stderr

    full = client.get_task(task_id, view="FULL")
    log = full.logs[0].logs[0]
    assert log.stdout == "hi\n" and log.stderr == "oops\n"
    assert full.logs[0].start_time is not None and full.logs[0].end_time is not None


def test_task__stages_inline_and_file_inputs_and_delivers_a_file_output(setup: Setup) -> None:
    (setup.files / "words.txt").write_text("from a file\n")
    client = setup.client(setup.alice_key)
    script = "cat /data/in.txt /data/words.txt | tr a-z A-Z > /data/out/result.txt"
    task_id = create(
        client,
        tes.Task(
            name="staging",
            inputs=[
                tes.Input(path="/data/in.txt", content="inline\n"),
                tes.Input(path="/data/words.txt", url=f"file://{setup.files}/words.txt"),
            ],
            outputs=[
                tes.Output(path="/data/out/result.txt", url=f"file://{setup.files}/result.txt")
            ],
            volumes=["/data/out"],
            executors=[tes.Executor(image=PYTHON_IMAGE, command=["sh", "-c", script])],
        ),
    )
    client.wait(task_id, timeout=TIMEOUT)
    full = client.get_task(task_id, view="FULL")
    assert full.state == "COMPLETE", full.logs
    assert (setup.files / "result.txt").read_text() == "INLINE\nFROM A FILE\n"
    assert int(full.logs[0].outputs[0].size_bytes) == 19  # a string on the wire
    assert full.inputs[0].content == "inline\n"  # FULL: content too
    assert client.get_task(task_id, view="BASIC").inputs[0].content is None


def test_task__a_failing_executor_ends_executor_error_and_unsupported_parameters_are_noted(
    setup: Setup,
) -> None:
    client = setup.client(setup.alice_key)
    ignored = tes.Resources(backend_parameters={"gpu_model": "x"})  # not strict: a warning
    task_id = create(client, task("fails", ["sh", "-c", "exit 3"], resources=ignored))
    client.wait(task_id, timeout=TIMEOUT)
    full = client.get_task(task_id, view="FULL")
    assert full.state == "EXECUTOR_ERROR"
    assert full.logs[0].logs[0].exit_code == 3
    assert any("gpu_model" in line for line in full.logs[0].system_logs)
    assert not (full.resources.backend_parameters or {})  # neither stored nor returned


def test_list__filters_by_name_prefix_state_and_tags_and_pages_newest_first(
    setup: Setup,
) -> None:
    client = setup.client(setup.bob_key)  # bob's tasks only
    ids = [
        create(client, task(f"page-{n}", ["true"], tags={"batch": "p", "n": str(n)}))
        for n in range(5)
    ]
    for task_id in ids:
        client.wait(task_id, timeout=TIMEOUT)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = client.list_tasks(view="MINIMAL", page_size=2, page_token=token)
        pages += 1
        seen += [t.id for t in page.tasks]
        assert len(page.tasks) <= 2
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids)) and pages == 3  # newest first: 2 + 2 + 1

    key = setup.bob_key
    assert listed(setup, key, name_prefix="page-3")[0] == [ids[3]]
    assert listed(setup, key, name_prefix="PAGE")[0] == []  # a prefix, case and all
    assert set(listed(setup, key, state="COMPLETE")[0]) == set(ids)
    assert listed(setup, key, state="RUNNING")[0] == []
    assert listed(setup, key, tag_key=["batch", "n"], tag_value=["p", "2"])[0] == [ids[2]]
    assert len(listed(setup, key, tag_key=["n"])[0]) == 5  # a key alone: any value
    assert listed(setup, key, tag_key=["missing"])[0] == []
    # Filters and pages together: the token goes on under the same filters.
    first, token = listed(setup, key, tag_key=["batch"], page_size=3)
    assert first == list(reversed(ids))[:3] and token
    rest, token = listed(setup, key, tag_key=["batch"], page_size=3, page_token=token)
    assert rest == list(reversed(ids))[3:] and token is None


def test_cancel__a_queued_task_at_once_and_a_running_one_with_its_container(
    setup: Setup,
) -> None:
    client = setup.client(setup.alice_key)
    held = tes.Resources(backend_parameters={"destination": "held"})
    running = create(client, task("sleeper", ["sleep", "300"], resources=held))
    wait_state(client, running, {"RUNNING"})
    queued = create(client, task("waiting", ["true"], resources=held))
    assert client.get_task(queued).state == "QUEUED"  # behind the sleeper (max_concurrent)

    client.cancel_task(queued)
    assert client.get_task(queued).state == "CANCELED"

    client.cancel_task(running)
    assert wait_state(client, running, ENDED) == "CANCELED"

    def containers() -> str:
        return subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name=^jobferry-{running}-"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    deadline = time.monotonic() + DEADLINE_S
    while containers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers() == ""
    client.cancel_task(running)  # cancelling an ended task is not an error


def test_invalid_documents_and_list_parameters__are_400_naming_the_field(setup: Setup) -> None:
    url = setup.daemon.url + "/ga4gh/tes/v1/tasks"
    headers = {"Authorization": f"Bearer {setup.alice_key}"}
    for body, field in [
        ({"executors": []}, "executors"),
        ({"executors": [{"image": "", "command": ["true"]}]}, "executors[0].image"),
        ({"executors": [{"image": PYTHON_IMAGE, "command": "true"}]}, "executors[0].command"),
        (
            {
                "executors": [{"image": PYTHON_IMAGE, "command": ["true"]}],
                "resources": {
                    "backend_parameters": {"gpu_model": "x"},
                    "backend_parameters_strict": True,
                },
            },
            "backend_parameters",
        ),
    ]:
        response = requests.post(url, json=body, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == 400
        assert field in response.json()["message"], (field, response.text)
    big = {"executors": [{"image": PYTHON_IMAGE, "command": ["true"]}]}
    big["inputs"] = [{"path": "/in/big.txt", "content": "x" * (1024 * 1024 + 1)}]
    response = requests.post(url, json=big, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 400 and "inputs[0].content" in response.json()["message"]
    big["inputs"][0]["content"] = "y" * (200 * 1024)  # the spec's 128 KiB, and more
    response = requests.post(url, json=big, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    requests.post(
        f"{url}/{response.json()['id']}:cancel", headers=headers, timeout=TIMEOUT
    ).raise_for_status()
    for params, field in [
        ({"page_size": "2048"}, "page_size"),
        ({"page_size": "0"}, "page_size"),
        ({"view": "EVERYTHING"}, "view"),
        ({"state": "DONE"}, "state"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"tag_key": "a", "tag_value": ["1", "2"]}, "tag_value"),
    ]:
        response = requests.get(url, params=params, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 400, (params, response.text)
        assert field in response.json()["message"], (field, response.text)


def test_create__a_local_destination_without_a_container_command_is_refused(
    setup: Setup,
) -> None:
    local = tes.Resources(backend_parameters={"destination": "local"})
    with pytest.raises(requests.HTTPError) as raised:
        create(setup.client(setup.alice_key), task("nope", ["true"], resources=local))
    assert raised.value.response.status_code == 400
    assert "cannot run containers" in raised.value.response.json()["message"]


def test_auth__unknown_id_wrong_key_basic_credentials_and_other_users(setup: Setup) -> None:
    alice = setup.client(setup.alice_key)
    with pytest.raises(requests.HTTPError) as raised:
        alice.get_task("nosuchtask")
    assert raised.value.response.status_code == 404

    with pytest.raises(requests.HTTPError) as raised:
        setup.client("jf_" + "x" * 43).list_tasks()
    assert raised.value.response.status_code == 401
    assert "Basic" in raised.value.response.headers["WWW-Authenticate"]
    with pytest.raises(requests.HTTPError) as raised:
        tes.HTTPClient(setup.daemon.url, timeout=TIMEOUT).list_tasks()  # no credentials
    assert raised.value.response.status_code == 401

    task_id = create(alice, task("mine", ["true"]))
    by_password = tes.HTTPClient(
        setup.daemon.url, user="alice", password=ALICE_PASSWORD, timeout=TIMEOUT
    )
    assert by_password.get_task(task_id).id == task_id
    by_key = tes.HTTPClient(
        setup.daemon.url, user="alice", password=setup.alice_key, timeout=TIMEOUT
    )
    assert by_key.get_task(task_id).id == task_id
    with pytest.raises(requests.HTTPError) as raised:  # bob's key is not alice's
        tes.HTTPClient(
            setup.daemon.url, user="alice", password=setup.bob_key, timeout=TIMEOUT
        ).get_task(task_id)
    assert raised.value.response.status_code == 401

    bob = setup.client(setup.bob_key)
    for call in (lambda: bob.get_task(task_id), lambda: bob.cancel_task(task_id)):
        with pytest.raises(requests.HTTPError) as raised:
            call()
        assert raised.value.response.status_code == 404
    assert task_id not in {t.id for t in bob.list_tasks().tasks or []}
    assert task_id in {t.id for t in setup.client(setup.admin_key).list_tasks().tasks or []}
    alice.wait(task_id, timeout=TIMEOUT)


def test_routes__the_cancel_suffix_is_not_part_of_the_id(setup: Setup) -> None:
    headers = {"Authorization": f"Bearer {setup.alice_key}"}
    response = requests.get(
        setup.daemon.url + "/ga4gh/tes/v1/tasks/abc:cancel", headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 405  # the cancel route, which takes only POST


def test_other_faces__show_a_task_as_a_job_without_a_script(setup: Setup) -> None:
    client = setup.client(setup.alice_key)
    task_id = create(client, task("seen-elsewhere", ["true"]))
    client.wait(task_id, timeout=TIMEOUT)
    headers = {"Authorization": f"Bearer {setup.alice_key}"}
    url = setup.daemon.url
    details = requests.get(f"{url}/api/jobs/v1/{task_id}/details/", headers=headers, timeout=60)
    assert details.status_code == 200, details.text
    galaxy = requests.get(f"{url}/api/jobs/{task_id}", headers=headers, timeout=60)
    assert galaxy.status_code == 200, galaxy.text
    listed = requests.get(f"{url}/api/jobs", headers=headers, timeout=60)
    assert listed.status_code == 200 and task_id in {j["id"] for j in listed.json()}


def test_restart__a_running_task_is_followed_again_and_completes(setup: Setup) -> None:
    """The daemon stops with the task's program running (its jobs keep running) and
    re-attaches to it at start, through the local runner its job names."""
    client = setup.client(setup.alice_key)
    task_id = create(client, task("survivor", ["sh", "-c", "sleep 3; echo done"]))
    wait_state(client, task_id, {"RUNNING"})
    setup.daemon.stop()
    setup.daemon.start()
    client = setup.client(setup.alice_key)  # a new port
    assert client.wait(task_id, timeout=TIMEOUT).state == "COMPLETE"
    assert client.get_task(task_id, view="FULL").logs[0].logs[0].stdout == "done\n"
