"""Property-based fuzzing of a real daemon against its OpenAPI document.

schemathesis generates requests for every operation of ``jobferry/api/openapi.yaml``
(the document the daemon serves) and sends them to a real daemon; each response
must not be an unexpected 5xx and must conform to the schema documented for its
status code (an undocumented status falls to the operation's ``default``: the JSON
error shape). Afterwards the daemon's log must hold no traceback: an exception in
a request-body callback never reaches the client as a 500 - the connection drops.

Nothing is excluded. Generated ids rarely name anything and secrets cannot be
guessed, so each case is also given, by a draw seeded from the generated case
itself (replays by Hypothesis get the same draw):

- real ids (a finished job, a running job, its output file, the scripts, the users)
  in place of generated ones, two times in three;
- credentials: the admin's key (``Authorization: Bearer`` - the base -, ``x-api-key``,
  ``?key=``), a non-admin user's key, a wrong key, none. An operation without any
  parameter is sent with every one of them;
- for job_files: the running job's valid job_key (and a real path), a wrong key, or
  none, while the admin's API key is always sent and must not help;
- for the POST operations, one time in three, a body known to succeed, so that the
  success schemas are checked too.

``JOBFERRY_FUZZ_EXAMPLES`` sets the examples per operation (default 20: under a
minute in all).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from jobferry.api.openapi import load_document
from tests.helpers import JOB_SCRIPTS, ROOT, DaemonProcess

pytestmark = pytest.mark.e2e

#: Generated cases per operation (plus the documented examples); more for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("JOBFERRY_FUZZ_EXAMPLES", "20"))
ALICE_PASSWORD = "correct horse battery 9"
BOGUS_KEY = "0" * 32
HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
DOCUMENT = load_document()

response_schema_conformance = schemathesis.checks.response_schema_conformance
content_type_conformance = schemathesis.checks.content_type_conformance


# --- the daemon and what it holds --------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Real ids and keys of one daemon, handed to the generated cases."""

    daemon: DaemonProcess
    admin_key: str
    admin_id: str
    alice_key: str
    alice_id: str
    done_job: str
    done_output: str
    done_input: str
    active_job: str
    active_job_key: str

    @property
    def active_dir(self) -> Path:
        return self.daemon.data_dir / "jobs" / self.active_job[:2] / self.active_job


def _cli_with_input(daemon: DaemonProcess, stdin: str, *args: str) -> str:
    cmd = daemon.cli_command(*args)
    result = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("schemathesis")
    config = {
        "server": {"max_upload_mb": 2},
        "jobs": {"default_walltime_s": 120},
        "runners": {"local": {"slots": 2}},
        # The TES face on, so its operations are fuzzed past the 403 of a disabled face.
        # Its executors' "container engine" fails at once: fuzzed images are never run.
        "tes": {"enabled": True, "container_command": ["/bin/false"]},
    }
    proc = DaemonProcess(base / "data", config).start()
    try:
        yield proc
    finally:
        _cancel_everything(proc)
        proc.stop()


def _cancel_everything(daemon: DaemonProcess) -> None:
    """Fuzzed submissions may still run (a sleeper told to sleep for ages): stop them."""
    for state in ("new", "queued", "running", "deleting"):
        listed = daemon.cli("job", "list", "--state", state, "--json", check=False)
        if listed.returncode != 0:
            continue
        for job in json.loads(listed.stdout or "[]"):
            daemon.cli("job", "cancel", job["id"], check=False)


@pytest.fixture(scope="module")
def world(daemon: DaemonProcess) -> World:
    admin = daemon.client()
    admin.add_script("wordcount", JOB_SCRIPTS / "wordcount.py")
    admin.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    done = admin.submit(
        "wordcount", "--infile doc --upper", files={"doc": ("doc.txt", b"one two three")}
    )
    details = admin.wait(done)
    assert details["status"] == "completed", details
    done_output = details["assets"][0]["url"].rstrip("/").rsplit("/", 1)[-1]
    inputs = admin.get(f"/api/jobs/{done}/inputs")
    assert inputs.status_code == 200, inputs.text
    active = admin.submit("sleeper", "100")
    alice = json.loads(
        daemon.cli("user", "create", "alice", "--email", "alice@example.org", "--json").stdout
    )
    _cli_with_input(daemon, ALICE_PASSWORD + "\n", "user", "passwd", "alice")
    users = json.loads(daemon.cli("user", "list", "--json").stdout)
    return World(
        daemon=daemon,
        admin_key=daemon.admin_key,
        admin_id=next(u["id"] for u in users if u["username"] == "admin"),
        alice_key=alice["api_key"],
        alice_id=alice["id"],
        done_job=done,
        done_output=done_output,
        done_input=inputs.json()[0]["dataset"]["id"],
        active_job=active,
        active_job_key=daemon.cli("job", "key", active).stdout.strip(),
    )


def make_schema() -> Any:
    """The packaged document (the daemon serves the same: test_served_document_is_the_one).

    Loaded at import, not from the daemon: schemathesis's lazy fixture loader does not
    work with pytest 9 (it sets ``Function._nodeid``). The base URL is given per call.
    """
    loaded = schemathesis.openapi.from_dict(load_document())
    loaded.config.update(request_timeout=30)
    loaded.config.generation.update(
        max_examples=MAX_EXAMPLES,
        with_security_parameters=False,  # credentials come from World (see variants)
        database="none",
    )
    loaded.config.phases.update(phases=["examples", "fuzzing"])
    return loaded


# --- cases ---------------------------------------------------------------------------------

#: One way to present credentials: headers, and query parameters to add.
Variant = tuple[dict[str, str], dict[str, str]]

#: File parts to send instead of the generated body (schemathesis sends the parts of an
#: ``additionalProperties: {format: binary}`` schema without a filename: not files).
_UPLOADS: dict[str, dict[str, tuple[str, bytes]]] = {}


class Draw:
    """Choices seeded by the generated case (Hypothesis replays give the same ones)."""

    def __init__(self, case: Case) -> None:
        generated = repr((case.path_parameters, case.query, case.headers, case.body))
        self.seed = hashlib.sha256(f"{case.operation.label}|{generated}".encode()).hexdigest()

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")

    def chance(self, name: str, p: float) -> bool:
        return self.rng(name).random() < p

    def real(self, name: str, choices: list[Any]) -> Any:
        """One of *choices* two times in three, else None (keep the generated value)."""
        rng = self.rng(name)
        return rng.choice(choices) if choices and rng.random() < 2 / 3 else None


def _operation(case: Case) -> dict[str, Any]:
    item = DOCUMENT["paths"][case.operation.path]
    return dict(item[case.method.lower()])


def _takes_nothing(case: Case) -> bool:
    """No parameter and no body: every case of it is the same request."""
    item = DOCUMENT["paths"][case.operation.path]
    op = _operation(case)
    return not item.get("parameters") and not op.get("parameters") and "requestBody" not in op


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def credential_variants(case: Case, world: World) -> list[Variant]:
    path = case.operation.path
    if path == "/api/jobs/{job_id}/files":
        # job_key only (set in prepare); the admin's API key must not help.
        return [({**_bearer(world.admin_key), "x-api-key": world.admin_key}, {})]
    if path == "/api/authenticate/baseauth":
        return [
            ({"Authorization": "Basic " + _b64(f"alice:{ALICE_PASSWORD}")}, {}),
            ({"Authorization": _b64(f"alice@example.org:{ALICE_PASSWORD}")}, {}),  # bioblend
            ({"Authorization": "Basic " + _b64("alice:wrong password")}, {}),
            ({"Authorization": "Basic " + _b64("nobody:whatever")}, {}),
            ({"Authorization": "Basic not-base64!"}, {}),
            (_bearer(world.admin_key), {}),
            ({}, {}),
        ]
    if path.startswith(("/api/scripts/v1/", "/api/jobs/v1/")):  # the Wooey face
        return [
            (_bearer(world.admin_key), {}),
            (_bearer(world.alice_key), {}),
            (_bearer(BOGUS_KEY), {}),
            ({"Authorization": f"bearer {world.admin_key}"}, {}),  # Wooey's exact form only
            ({}, {}),
        ]
    return [  # the Galaxy face
        (_bearer(world.admin_key), {}),
        ({"x-api-key": world.admin_key}, {}),
        ({}, {"key": world.admin_key}),
        ({"x-api-key": world.alice_key}, {}),
        ({"x-api-key": BOGUS_KEY}, {}),
        ({}, {}),
    ]


def prepare(case: Case, world: World) -> list[Variant]:
    """Point the case at real objects; return the credential variants to send it with."""
    draw = Draw(case)
    params = case.path_parameters if case.path_parameters is not None else {}
    query = case.query = dict(case.query or {})
    real: dict[str, list[Any]] = {
        "slug": ["wordcount", "sleeper"],
        "tool_id": ["wordcount", "sleeper"],
        "job_id": [world.done_job, world.active_job],
        "file_id": [world.done_output],
        "dataset_id": [world.done_output, world.done_input],
        "user_id": ["current", world.alice_id, world.admin_id],
    }
    for name in params:
        chosen = draw.real(name, real.get(name, []))
        if chosen is not None:
            params[name] = chosen
    path = case.operation.path
    if path.endswith("/status/") and params.get("job_id") == world.active_job:
        # ?wait= holds the answer while the job runs: keep it short.
        try:
            if float(query.get("wait", 0)) > 0.5:
                query["wait"] = 0.5
        except (TypeError, ValueError):
            pass  # not a number: answered 400 at once
    if path == "/api/jobs/{job_id}/files":
        _prepare_job_files(case, world, draw)
    if case.method == "POST" and draw.chance("good body", 1 / 3):
        _good_body(case, world, draw)
    variants = credential_variants(case, world)
    if _takes_nothing(case) or path == "/api/authenticate/baseauth":
        return variants
    # The admin's first variant half of the time, else any.
    rng = draw.rng("credentials")
    return [variants[0] if rng.random() < 0.5 else rng.choice(variants)]


def _prepare_job_files(case: Case, world: World, draw: Draw) -> None:
    """The running job's valid key (and a real path), a wrong key, or none."""
    assert case.query is not None and case.path_parameters is not None
    mode = draw.rng("job_key").randrange(4)
    if mode in (0, 1):
        case.path_parameters["job_id"] = world.active_job
        case.query["job_key"] = world.active_job_key
        if mode == 0:
            target = "stdout" if case.method in ("GET", "HEAD") else "work/fuzz-out.txt"
            case.query["path"] = str(world.active_dir / target)
    elif mode == 2:
        case.path_parameters["job_id"] = world.active_job
        case.query["job_key"] = BOGUS_KEY
    # mode 3: the generated job id, no key


def _good_body(case: Case, world: World, draw: Draw) -> None:
    """A body the operation accepts, for its success answer to be checked too."""
    path = case.operation.path
    multipart = case.media_type == "multipart/form-data"
    name = f"fuzz-{draw.seed[:8]}"
    if path == "/api/scripts/v1/add-or-update/" and multipart:
        script = (JOB_SCRIPTS / "wordcount.py").read_bytes()
        _UPLOADS[case.id] = {"wordcount": ("wordcount.py", script)}
    elif path == "/api/scripts/v1/{slug}/submit/" and multipart:
        assert case.path_parameters is not None
        case.path_parameters["slug"] = "wordcount"
        case.body = {"job_name": name, "command": "--infile doc"}
        _UPLOADS[case.id] = {"doc": ("doc.txt", b"a b c")}
    elif path == "/api/jobs/{job_id}/files" and multipart:
        assert case.query is not None and case.path_parameters is not None
        case.path_parameters["job_id"] = world.active_job
        case.query["job_key"] = world.active_job_key
        case.query["path"] = str(world.active_dir / "work" / f"{name}.txt")
        case.body = {"file": b"fuzzed output\n"}  # type: ignore[dict-item]
    elif path == "/api/jobs/search":
        case.body = {
            "tool_id": "wordcount",
            "inputs": {"infile": {"src": "hda", "id": world.done_input}, "upper": True},
        }
    elif path == "/api/tools":
        case.body = {"tool_id": "sleeper", "inputs": {"seconds": 0.1}}
    elif path == "/api/users":
        case.body = {
            "username": name,
            "email": f"{name}@example.org",
            "password": "long enough password 1",
        }


# --- checks --------------------------------------------------------------------------------


def no_undocumented_server_error(ctx: Any, response: Any, case: Case) -> bool | None:
    """``not_a_server_error``, except a 5xx the operation documents (501: not implemented)."""
    if str(response.status_code) in _operation(case)["responses"]:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS: list[Callable[..., bool | None]] = [
    no_undocumented_server_error,
    response_schema_conformance,
    content_type_conformance,  # a body of another media type is not checked by the above
]

schema = make_schema()

#: Statuses answered per operation ("GET /api/jobs" -> {200, 400, ...}), for the summary.
SEEN: dict[str, set[int]] = {}


@pytest.mark.timeout(120)  # per operation; a whole run takes under a minute
@schema.parametrize()
def test_api(case: Case, world: World) -> None:
    variants = prepare(case, world)
    base_query = dict(case.query or {})
    try:
        _send_variants(case, world, variants, base_query)
    finally:
        _UPLOADS.pop(case.id, None)


def _send_variants(
    case: Case, world: World, variants: list[Variant], base_query: dict[str, Any]
) -> None:
    for headers, extra_query in variants:
        case.query = {**base_query, **extra_query}
        seen = SEEN.setdefault(case.operation.label, set())
        response: Any
        try:
            if case.id in _UPLOADS:
                response = _send_upload(case, world, headers)
            else:
                response = case.call_and_validate(
                    base_url=world.daemon.url, headers=headers, checks=CHECKS
                )
        except FailureGroup as group:
            seen.update(f.status_code for f in group.exceptions if hasattr(f, "status_code"))
            raise
        seen.add(response.status_code)


def _send_upload(case: Case, world: World, headers: dict[str, str]) -> requests.Response:
    """The case's form fields and real file parts, sent with requests; then checked."""
    fields = case.body if isinstance(case.body, dict) else {}
    response = requests.request(
        case.method,
        world.daemon.url + case.formatted_path,
        params=case.query,
        headers=headers,
        data={k: v for k, v in fields.items() if isinstance(v, str)},
        files=_UPLOADS[case.id],
        timeout=30,
    )
    case.validate_response(response, checks=CHECKS)
    return response


def test_served_document_is_the_one(daemon: DaemonProcess) -> None:
    response = requests.get(f"{daemon.url}/api/openapi.json", timeout=60)
    assert response.status_code == 200
    assert response.json() == DOCUMENT


def test_every_documented_operation_was_exercised(request: pytest.FixtureRequest) -> None:
    """Nothing excluded: every operation of the document was sent (runs after test_api)."""
    documented = {
        f"{method.upper()} {path}"
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert {op.ok().label for op in schema.get_all_operations()} == documented
    summary = "\n".join(f"  {label}: {sorted(SEEN.get(label, ()))}" for label in sorted(documented))
    print("statuses answered per operation:\n" + summary)
    selected = [i for i in request.session.items if getattr(i, "originalname", "") == "test_api"]
    if len(selected) == len(documented):  # not when some were deselected (-k)
        assert not documented - set(SEEN), f"never sent: {sorted(documented - set(SEEN))}"


def test_daemon_logged_no_unexpected_error(daemon: DaemonProcess) -> None:
    """No traceback in the daemon's log but the deliberate 501s (runs after test_api)."""
    found: dict[str, tuple[int, str]] = {}
    entries = re.split(r"\n(?=\d{4}-\d{2}-\d{2} )", daemon.log_text())
    for entry in entries:
        first, *rest = entry.rstrip().splitlines()
        if " ERROR " not in first or not rest:
            continue
        if rest[-1].startswith("tornado.web.HTTPError: HTTP 501"):
            continue
        where = [line.strip() for line in rest if "/jobferry/" in line and "File " in line]
        logger = first.split(" ERROR ", 1)[1]
        exception = rest[-1].split(":", 1)[0]
        key = f"{logger}\n    {exception} at {where[-1] if where else '?'}"
        count, _ = found.get(key, (0, ""))
        found[key] = (count + 1, rest[-1][:300])
    report = [f"  {n} x {key}\n    e.g. {example}" for key, (n, example) in found.items()]
    if found:
        pytest.fail("errors in the daemon's log:\n" + "\n".join(report), pytrace=False)
