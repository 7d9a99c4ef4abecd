"""The submission path's caches and cheap ids (issue 15): what they reuse, and when not.

* ``request_ids.fresh_hex``/``fresh_uuid4``: ids from buffered kernel random bytes,
  never repeated, also not across a fork;
* ``CommandChecker``: a short command's check reused for the same spec object only,
  refusals never kept, each caller with its own values;
* ``ScriptVersions``: parsed specs kept by version id and checksum, so a re-resolved
  version keeps its spec object, and a version registered by another node sharing the
  store (a second ``Core`` on the same database) is run with its own spec.

The store tests run on the run's engine (SQLite, or PostgreSQL with
``JOBFERRY_TEST_DB=postgres``).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobferry.argspec import command
from jobferry.argspec.bounded import CommandChecker, CommandLimits
from jobferry.argspec.command import build_command
from jobferry.argspec.introspect import ScriptSpec, introspect_script
from jobferry.config import parse_config
from jobferry.errors import ValidationError
from jobferry.request_ids import fresh_hex, fresh_uuid4
from jobferry.runners.fake import FakeRunner
from jobferry.services import submission
from jobferry.services.container import Services, build
from jobferry.services.core import Core, Principal
from jobferry.services.scripts import ScriptUpload
from jobferry.store.engine import check_schema
from jobferry.store.models import new_id
from tests.db import database_url

pytestmark = [pytest.mark.timeout(120)]

SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "scripts"

FIRST = """import argparse
p = argparse.ArgumentParser()
p.add_argument("--alpha", type=int)
p.parse_args()
"""
SECOND = """import argparse
p = argparse.ArgumentParser()
p.add_argument("--beta", type=int)
p.parse_args()
"""


def spec_of(tmp_path: Path, source: str) -> ScriptSpec:
    script = tmp_path / f"s{abs(hash(source))}.py"
    script.write_text(source)
    return introspect_script(str(script), interpreter=sys.executable, timeout_s=30, memory_mb=512)


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.engine_independent
def test_fresh_ids__are_hex_of_the_asked_width_and_never_repeat() -> None:
    ids = [new_id() for _ in range(20_000)] + [fresh_hex(8) for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert re.fullmatch(r"[0-9a-f]{64}", fresh_hex(32))
    # More than a buffer's worth at once still comes out whole.
    assert re.fullmatch(r"[0-9a-f]{10000}", fresh_hex(5000))


@pytest.mark.engine_independent
def test_fresh_uuid4__is_a_random_rfc_4122_uuid_in_its_string_form() -> None:
    seen = set()
    for _ in range(5000):
        text = fresh_uuid4()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 5000


@pytest.mark.engine_independent
def test_fresh_ids__a_forked_child_never_hands_out_the_parents_buffered_bytes() -> None:
    fresh_hex(8)  # the parent's buffer is filled: a child would inherit it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then out without running pytest's exit handlers
        try:
            os.write(write, " ".join(fresh_hex(8) for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    child = set(b"".join(chunks).decode().split())
    parent = {fresh_hex(8) for _ in range(50)}
    assert len(child) == 50
    assert not child & parent


# --- checked commands -------------------------------------------------------------------------


@pytest.mark.engine_independent
def test_command_checker__reuses_a_check_for_the_same_spec_with_a_copy_of_its_values(
    tmp_path: Path,
) -> None:
    spec = spec_of(tmp_path, FIRST)
    checker = CommandChecker(CommandLimits())
    one = checker.check(spec, "--alpha 3", {})
    two = checker.check(spec, "--alpha 3", {})
    assert one == two == build_command(spec, "--alpha 3", {})
    assert one.values == {"alpha": 3}
    one.values["alpha"] = 99  # a caller changing its row's params
    assert checker.check(spec, "--alpha 3", {}).values == {"alpha": 3}
    assert two.values == {"alpha": 3}


@pytest.mark.engine_independent
def test_command_checker__a_refused_command_is_refused_every_time(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, FIRST)
    checker = CommandChecker(CommandLimits())
    for _ in range(3):
        with pytest.raises(ValidationError):
            checker.check(spec, "--alpha three", {})
        with pytest.raises(ValidationError):
            checker.check(spec, "--beta 3", {})


@pytest.mark.engine_independent
def test_command_checker__another_spec_is_checked_afresh_not_given_the_old_result(
    tmp_path: Path,
) -> None:
    first, second = spec_of(tmp_path, FIRST), spec_of(tmp_path, SECOND)
    checker = CommandChecker(CommandLimits())
    assert checker.check(first, "--alpha 3", {}).values == {"alpha": 3}
    with pytest.raises(ValidationError):
        checker.check(second, "--alpha 3", {})
    assert checker.check(second, "--beta 4", {}).values == {"beta": 4}
    # The same content parsed into a new object (a re-read spec) is not the cached one,
    # and still gives the same answer.
    again = ScriptSpec.from_dict(first.to_dict())
    assert checker.check(again, "--alpha 3", {}).values == {"alpha": 3}


@pytest.mark.engine_independent
def test_build_command__parses_again_unless_the_argv_is_the_commands_own_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round-trip parse (which refuses ambiguous argvs) is skipped only when the
    rendered argv is the very token list just parsed: parsing it again could not differ."""
    spec = spec_of(
        tmp_path,
        """import argparse
p = argparse.ArgumentParser()
p.add_argument("--tag", nargs="?", const="c")
p.add_argument("word", nargs="?")
p.parse_args()
""",
    )
    parsed: list[list[str]] = []
    real = command._parse

    def counting(spec: ScriptSpec, tokens: list[str]) -> object:
        parsed.append(list(tokens))
        return real(spec, tokens)

    monkeypatch.setattr(command, "_parse", counting)
    built = build_command(spec, "--tag=x word", {})
    assert built.values == {"tag": "x", "word": "word"}
    assert parsed == [["--tag=x", "word"], ["--tag=x", "--", "word"]]
    parsed.clear()
    assert list(build_command(spec, "--tag=x -- word", {}).args) == ["--tag=x", "--", "word"]
    assert parsed == [["--tag=x", "--", "word"]]
    parsed.clear()
    assert build_command(spec, "", {}).args == ()
    assert parsed == [[]]


# --- script versions across nodes -------------------------------------------------------------


def make_services(data: Path, store_url: str) -> Services:
    config = parse_config({"data_dir": str(data), "database": {"url": store_url}})
    core = Core(config, runners={"local": FakeRunner()})
    core.ensure_dirs()
    check_schema(core.engine)
    return build(core)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[Services, Services, Principal]]:
    """Two service containers (two nodes' caches) on one store."""
    url = database_url(tmp_path / "node-a")  # the run's engine, one store for both
    a = make_services(tmp_path / "node-a", url)
    b = make_services(tmp_path / "node-b", url)
    try:
        a.auth.ensure_admin()
        admin = a.auth.authenticate((a.core.data_path / "admin-api-key").read_text().strip())
        yield a, b, admin
    finally:
        b.core.close()
        a.core.close()


def register(services: Services, admin: Principal, tmp_path: Path, source: str) -> str:
    script = tmp_path / "upload.py"
    script.write_text(source)
    result = services.scripts.add_or_update(admin, [ScriptUpload("caches", script, "caches.py")])
    assert result[0]["success"], result
    return str(result[0]["slug"])


def test_script_versions__a_re_resolved_version_keeps_its_parsed_spec_object(
    two_nodes: tuple[Services, Services, Principal],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, admin = two_nodes
    slug = register(a, admin, tmp_path, FIRST)
    monkeypatch.setattr(submission, "VERSION_CACHE_S", 0.0)  # every resolve reads the store
    versions = b.jobs.versions
    first = versions.resolve(slug, None, None)
    again = versions.resolve(slug, None, None)
    assert again.id == first.id
    assert again.spec is first.spec


def test_script_versions__a_version_registered_on_another_node_runs_with_its_own_spec(
    two_nodes: tuple[Services, Services, Principal],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node A updates the script; node B, once its VERSION_CACHE_S is over, resolves
    the new default version and checks commands against the new spec, never the
    old one's cached spec or checked commands."""
    a, b, admin = two_nodes
    slug = register(a, admin, tmp_path, FIRST)
    versions, checker = b.jobs.versions, b.jobs.intake.checker
    old = versions.resolve(slug, None, None)
    assert checker.check(old.spec, "--alpha 1", {}).values == {"alpha": 1}

    register(a, admin, tmp_path, SECOND)  # through node A: node B's generation is unchanged
    assert versions.cached(slug, None, None) == old  # within VERSION_CACHE_S: the old one
    monkeypatch.setattr(submission, "VERSION_CACHE_S", 0.0)  # the bound has passed
    new = versions.resolve(slug, None, None)
    assert new.id != old.id
    assert new.spec is not old.spec
    assert [p.dest for p in new.spec.params] == ["beta"]
    with pytest.raises(ValidationError):
        checker.check(new.spec, "--alpha 1", {})
    assert checker.check(new.spec, "--beta 2", {}).values == {"beta": 2}
    # The old version, named explicitly, still runs with its own spec.
    assert versions.resolve(slug, None, 1).spec.to_dict() == old.spec.to_dict()
