"""The admin command line, as real ``python -m jobferry.cli`` processes on real data dirs,
without a daemon: config check, db, users and keys, scripts, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from jobferry.store.engine import display_url
from tests.db import on_postgres, store_sql
from tests.e2e.cli_helpers import HEAD, as_json, assert_one_line_error, run_cli
from tests.helpers import JOB_SCRIPTS, DaemonProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh(tmp_path: Path) -> DaemonProcess:
    """A data directory that does not exist yet (no daemon started)."""
    return DaemonProcess(tmp_path / "data")


# --- config check ---------------------------------------------------------------------------


def test_config_check__prints_the_effective_configuration_as_yaml_and_json(
    fresh: DaemonProcess,
) -> None:
    result = fresh.cli("config", "check")
    shown = yaml.safe_load(result.stdout)
    data_dir = fresh.data_dir.resolve()
    assert shown["data_dir"] == str(data_dir)
    assert (shown["server"]["host"], shown["server"]["port"]) == ("127.0.0.1", 8080)
    assert shown["database"]["url"] == (
        fresh.database_url if on_postgres() else f"sqlite:///{data_dir}/jobferry.db"
    )
    assert shown["runners"]["local"]["slots"] == (os.cpu_count() or 1)
    assert shown["scripts"]["interpreter"]
    assert as_json(fresh.cli("config", "check", "--json")) == shown
    assert not fresh.data_dir.exists()  # checking the configuration touches nothing


def test_config_check__reads_the_file_from_config_or_the_environment(tmp_path: Path) -> None:
    from_env = tmp_path / "env.yml"
    from_env.write_text("server:\n  port: 9001\nlogging:\n  level: DEBUG\n")
    given = tmp_path / "given.yml"
    given.write_text("server:\n  port: 9002\n")
    env = {"JOBFERRY_CONFIG": str(from_env)}
    by_env = as_json(run_cli("config", "check", "--json", env=env))
    assert (by_env["server"]["port"], by_env["logging"]["level"]) == (9001, "DEBUG")
    by_flag = as_json(run_cli("config", "check", "--json", "--config", str(given), env=env))
    assert (by_flag["server"]["port"], by_flag["logging"]["level"]) == (9002, "INFO")
    with_dir = as_json(
        run_cli("config", "check", "--json", "--config", str(given), "--data-dir", "/srv/jf")
    )
    assert with_dir["data_dir"] == "/srv/jf"


def test_config_check__accepts_the_sample_file() -> None:
    sample = Path(__file__).resolve().parents[2] / "conf" / "jobferry.yml"
    shown = as_json(run_cli("config", "check", "--json", "--config", str(sample)))
    assert shown["server"]["port"] == 8080


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("server:\n  prot: 1\n", ["server.prot", "unknown key"]),
        ("server:\n  port: abc\n", ["server.port", "valid integer"]),
        ("server:\n  port: 70000\n", ["server.port", "65535"]),
        ("logging:\n  level: LOUD\n", ["logging.level", "'INFO'"]),
        ("server: [\n", ["not valid YAML", "line 2"]),
        ("- 1\n", ["(top level)", "mapping"]),
    ],
)
def test_config_check__bad_file_exits_non_zero_with_a_one_line_error(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    result = run_cli("config", "check", "--config", str(path))
    assert_one_line_error(result, str(path), *fragments)
    assert result.stdout == ""


def test_config_check__missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yml"
    result = run_cli("config", "check", "--config", str(missing))
    assert_one_line_error(result, str(missing), "cannot read")


# --- db -------------------------------------------------------------------------------------


def test_db_upgrade__creates_the_schema_on_a_fresh_dir_and_status_reports_it(
    fresh: DaemonProcess,
) -> None:
    before = fresh.cli("db", "status", "--json", check=False)
    assert before.returncode == 1
    assert json.loads(before.stdout)["up_to_date"] is False
    upgraded = as_json(fresh.cli("db", "upgrade", "--json"))
    assert (upgraded["from"], upgraded["to"]) == (None, HEAD)
    assert on_postgres() or (fresh.data_dir / "jobferry.db").is_file()
    status = as_json(fresh.cli("db", "status", "--json"))
    assert status == {
        "database": display_url(fresh.database_url),
        "current": HEAD,
        "head": HEAD,
        "up_to_date": True,
    }
    again = as_json(fresh.cli("db", "upgrade", "--json"))
    assert (again["from"], again["to"]) == (HEAD, HEAD)
    table = fresh.cli("db", "status").stdout
    assert re.search(r"^up_to_date\s+True$", table, re.M), table


def _serve_once(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    """``jobferry serve`` expected to exit by itself (bounded: killed after 60 s)."""
    config = ["--config", str(daemon.config_path)] if daemon.config_path else []
    return run_cli("serve", "--port", "0", "--data-dir", str(daemon.data_dir), *config)


def test_serve__refuses_an_unknown_schema_revision_naming_the_fix(fresh: DaemonProcess) -> None:
    fresh.cli("db", "upgrade")
    store_sql(fresh.database_url, "UPDATE alembic_version SET version_num = 'f00dfeed'")
    result = _serve_once(fresh)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("jobferry: error: ") and "jobferry db upgrade" in last, result.stderr
    assert not (fresh.data_dir / "daemon.json").exists()
    assert_one_line_error(fresh.cli("db", "upgrade", check=False), "f00dfeed")


def test_serve__refuses_a_schema_behind_head_until_db_upgrade(fresh: DaemonProcess) -> None:
    fresh.data_dir.mkdir(parents=True)
    statement = "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"
    store_sql(fresh.database_url, statement)
    result = _serve_once(fresh)
    assert result.returncode != 0
    assert "jobferry db upgrade" in result.stderr.strip().splitlines()[-1], result.stderr
    status = fresh.cli("db", "status", "--json", check=False)
    assert status.returncode == 1 and json.loads(status.stdout)["current"] is None
    fresh.cli("db", "upgrade")
    fresh.start()
    try:
        assert fresh.client().get("/api/scripts/v1/list/").status_code == 200
    finally:
        fresh.stop()


# --- users and keys (no daemon) -------------------------------------------------------------


def test_user_create__duplicate_is_a_one_line_error(fresh: DaemonProcess) -> None:
    fresh.cli("user", "create", "bob", "--email", "bob@example.org")
    again = fresh.cli("user", "create", "bob", check=False)
    assert again.returncode == 1 and again.stdout == ""
    assert_one_line_error(again, "bob")
    same_email = fresh.cli("user", "create", "robert", "--email", "bob@example.org", check=False)
    assert_one_line_error(same_email)


def test_user_create__bad_name_is_a_one_line_error_naming_the_field(fresh: DaemonProcess) -> None:
    result = fresh.cli("user", "create", "has space", check=False)
    assert result.returncode == 1
    assert_one_line_error(result, "username", "without spaces")


def test_user_list__shows_users_as_a_table_and_json(fresh: DaemonProcess) -> None:
    fresh.cli("user", "create", "root", "--email", "root@example.org", "--admin")
    fresh.cli("user", "create", "bob")
    table = fresh.cli("user", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "USERNAME", "EMAIL", "IS_ADMIN", "IS_ACTIVE", "CREATED_AT"]
    assert [line.split()[1] for line in table[1:]] == ["root", "bob"]
    users = as_json(fresh.cli("user", "list", "--json"))
    assert [(u["username"], u["email"], u["is_admin"]) for u in users] == [
        ("root", "root@example.org", True),
        ("bob", "bob@localhost", False),  # a placeholder, never null (Galaxy wants a string)
    ]


def test_key_create_list_revoke__without_a_daemon(fresh: DaemonProcess) -> None:
    fresh.cli("user", "create", "bob")
    key = fresh.cli("key", "create", "bob", "--name", "ci").stdout
    assert re.fullmatch(r"\S{20,}\n", key), key
    key = key.strip()
    listed = as_json(fresh.cli("key", "list", "--user", "bob", "--json"))
    assert [(k["name"], k["is_active"]) for k in listed] == [("default", True), ("ci", True)]
    ci = listed[1]
    assert key.startswith(ci["prefix"]) and len(ci["prefix"]) < len(key)
    for shown in (fresh.cli("key", "list").stdout, fresh.cli("key", "list", "--json").stdout):
        assert key not in shown and key[len(ci["prefix"]) :] not in shown
    revoked = as_json(fresh.cli("key", "revoke", ci["id"], "--json"))
    assert revoked == {"id": ci["id"], "revoked": True}
    after = as_json(fresh.cli("key", "list", "--user", "bob", "--json"))
    assert [k["is_active"] for k in after] == [True, False]


def test_key_commands__unknown_user_or_key_is_a_one_line_error(fresh: DaemonProcess) -> None:
    assert_one_line_error(fresh.cli("key", "create", "nobody", check=False), "nobody")
    assert_one_line_error(fresh.cli("key", "revoke", "0123456789abcdef", check=False), "API key")


# --- scripts (no daemon) --------------------------------------------------------------------


def test_script_add_list_show__versions_and_default(fresh: DaemonProcess, tmp_path: Path) -> None:
    wordcount = str(JOB_SCRIPTS / "wordcount.py")
    added = as_json(
        fresh.cli("script", "add", wordcount, "--group", "Text", "--name", "wc", "--json")
    )
    assert (added["success"], added["slug"], added["group"], added["iteration"]) == (
        True,
        "wc",
        "Text",
        1,
    )
    changed = tmp_path / "wordcount.py"
    changed.write_text((JOB_SCRIPTS / "wordcount.py").read_text() + "# v2\n")
    second = as_json(
        fresh.cli(
            "script",
            "add",
            str(changed),
            "--group",
            "Text",
            "--name",
            "wc",
            "--no-default",
            "--json",
        )
    )
    assert (second["slug"], second["iteration"], second["is_default"]) == ("wc", 2, False)

    listed = as_json(fresh.cli("script", "list", "--json"))
    assert [(s["slug"], s["group"], s["versions_count"]) for s in listed] == [("wc", "Text", 2)]
    assert listed[0]["default_version"]["script_iteration"] == 1
    table = fresh.cli("script", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["SLUG", "SCRIPT_NAME", "GROUP"]
    assert table[1].split()[:3] == ["wc", "wc", "Text"]

    shown = as_json(fresh.cli("script", "show", "wc", "--json"))
    assert [(v["script_iteration"], v["default_version"]) for v in shown["versions"]] == [
        (2, False),
        (1, True),
    ]
    assert "infile" in {p["dest"] for p in shown["versions"][0]["parameters"]}
    assert "versions_count" in fresh.cli("script", "show", "wc").stdout


def test_script_add__broken_script_exits_non_zero_and_stores_nothing(
    fresh: DaemonProcess, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import argparse\nraise RuntimeError('broken at import')\n")
    result = fresh.cli("script", "add", str(broken), "--group", "G", check=False)
    assert result.returncode != 0
    assert_one_line_error(result, "broken at import")
    assert as_json(fresh.cli("script", "list", "--json")) == []
    assert [p for p in (fresh.data_dir / "scripts").rglob("*") if p.is_file()] == []
    missing = fresh.cli("script", "add", str(tmp_path / "missing.py"), check=False)
    assert_one_line_error(missing, "missing.py")
    assert_one_line_error(fresh.cli("script", "show", "nope", check=False))


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["job", "list", "--state", "bogus"], "unknown state 'bogus'"),
        (["job", "list", "--limit", "many"], "invalid int value"),
        (["job", "show"], "required: id"),
        (["job", "show", "0123456789abcdef"], "no job with id"),
        (["job", "logs", "0123456789abcdef"], "no job with id"),
        (["job", "key", "0123456789abcdef"], "no job with id"),
        (["job", "cancel", "0123456789abcdef"], "no job with id"),
        (["job"], "ACTION"),
        (["frobnicate"], "invalid choice"),
        (["user", "create"], "required: name"),
    ],
)
def test_cli__bad_input_exits_non_zero_with_a_one_line_error(
    fresh: DaemonProcess, args: list[str], fragment: str
) -> None:
    result = fresh.cli(*args, check=False)
    assert_one_line_error(result, fragment)
    assert result.stdout == ""
