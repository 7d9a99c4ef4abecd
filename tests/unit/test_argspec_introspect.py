"""Tests of reading a script's argparse parser in a throwaway process."""

from __future__ import annotations

import builtins
import json
import os
import pwd
import shutil
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from jobferry.argspec import sandbox
from jobferry.argspec.introspect import MutexGroup, ParamSpec, ScriptSpec, introspect_script
from jobferry.errors import IntrospectionError

pytestmark = [pytest.mark.timeout(60), pytest.mark.engine_independent]

DEADLINE_S = 60.0
SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "scripts"


def introspect(path: Path, timeout_s: float = 20, memory_mb: int = 512) -> ScriptSpec:
    return introspect_script(
        str(path), interpreter=sys.executable, timeout_s=timeout_s, memory_mb=memory_mb
    )


@pytest.fixture(scope="module")
def spec() -> ScriptSpec:
    return introspect(SCRIPTS / "all_actions.py")


def by_dest(spec: ScriptSpec) -> dict[str, ParamSpec]:
    return {param.dest: param for param in spec.params}


def test_description_version_and_order(spec: ScriptSpec) -> None:
    assert spec.description == "Exercise every argparse action."
    assert spec.version == "2.5"
    assert spec.prog == "all_actions.py"
    dests = [param.dest for param in spec.params]
    assert "help" not in dests and "version" not in dests
    assert dests[0] == "name"
    assert [p.dest for p in spec.params if p.positional] == ["infile", "count", "extra"]


def test_actions_and_types(spec: ScriptSpec) -> None:
    params = by_dest(spec)
    expected = {
        "name": ("store", "str", None),
        "verbose": ("store_true", "bool", None),
        "color": ("store_false", "bool", None),
        "speed": ("store_const", "str", None),
        "tag": ("append", "str", None),
        "quiet": ("count", "int", None),
        "item": ("extend", "str", "+"),
        "level": ("store", "int", None),
        "ratio": ("store", "float", None),
        "maybe": ("store", "str", "?"),
        "many": ("store", "str", "*"),
        "some": ("store", "int", "+"),
        "pair": ("store", "str", 2),
        "marks": ("append_const", "str", None),
        "infile": ("store", "file", None),
        "count": ("store", "int", None),
        "extra": ("store", "str", "?"),
    }
    for dest, (action, type_, nargs) in expected.items():
        param = params[dest]
        assert (param.action, param.type, param.nargs) == (action, type_, nargs), dest


def test_details(spec: ScriptSpec) -> None:
    params = by_dest(spec)
    name = params["name"]
    assert name.option_strings == ("-n", "--name")
    assert name.required and not name.positional
    assert name.help == "Who to greet."
    assert name.display_name == "name"
    assert params["color"].display_name == "no-color"
    assert params["color"].default is True
    assert params["speed"].const == "fast"
    assert params["marks"].const == "m"
    assert params["level"].choices == (1, 2, 3)
    assert params["level"].default == 1
    assert params["level"].help == "Level (1)."  # %(default)s expanded
    assert params["mode"].choices == ("fast", "slow")
    assert params["maybe"].const == "yes"
    assert params["pair"].metavar == "X Y"
    assert params["ratio"].default == 0.5
    assert params["when"].type == "str" and params["when"].type_name == "<lambda>"
    assert params["threads"].group == "tuning"
    assert params["name"].group is None


def test_files(spec: ScriptSpec) -> None:
    params = by_dest(spec)
    assert params["input"].file_mode == "r" and params["input"].is_input_file
    assert params["infile"].is_input_file and params["infile"].required
    assert params["output"].file_mode == "w" and params["output"].is_output_file
    log = params["log"]
    assert log.is_output and log.default is None  # sys.stdout is not stored


def test_positionals_required_by_nargs(spec: ScriptSpec) -> None:
    params = by_dest(spec)
    assert params["count"].required and params["count"].display_name == "count"
    assert not params["extra"].required
    assert params["extra"].default == "x"


def test_mutually_exclusive(spec: ScriptSpec) -> None:
    assert spec.mutually_exclusive == (MutexGroup(required=False, dests=("json", "csv")),)


def test_round_trip_through_json(spec: ScriptSpec) -> None:
    data = json.loads(json.dumps(spec.to_dict()))
    assert ScriptSpec.from_dict(data) == spec


def test_malformed_data_is_refused(spec: ScriptSpec) -> None:
    data = spec.to_dict()
    data["params"][0]["action"] = "exec"
    with pytest.raises(IntrospectionError, match="malformed"):
        ScriptSpec.from_dict(data)
    data = spec.to_dict()
    data["params"][0]["option_strings"] = ["name"]
    with pytest.raises(IntrospectionError, match="malformed"):
        ScriptSpec.from_dict(data)


def test_parse_known_args() -> None:
    spec = introspect(SCRIPTS / "known_args.py")
    assert spec.description == "Tolerates extra arguments."
    assert spec.version == "0.9"  # the parser's version attribute
    assert [param.dest for param in spec.params] == ["config"]


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("subparsers.py", "subparsers are not supported"),
        ("no_parser.py", "no argparse parser found: the script did not call parse_args()"),
        (
            "crash_at_import.py",
            "the script crashed before parse_args(): RuntimeError: boom at import",
        ),
    ],
)
def test_refused(script: str, message: str) -> None:
    with pytest.raises(IntrospectionError) as info:
        introspect(SCRIPTS / script)
    assert info.value.message == message


def test_crash_output_is_kept() -> None:
    with pytest.raises(IntrospectionError) as info:
        introspect(SCRIPTS / "crash_at_import.py")
    assert "Traceback" in info.value.details["output"]


def test_exit_before_parse(tmp_path: Path) -> None:
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(IntrospectionError, match=r"exited before parse_args\(\): exit\(3\)"):
        introspect(script)


def test_missing_script(tmp_path: Path) -> None:
    with pytest.raises(IntrospectionError, match="does not exist"):
        introspect(tmp_path / "nope.py")


def test_memory_limit() -> None:
    with pytest.raises(IntrospectionError, match="MemoryError"):
        introspect(SCRIPTS / "memory_hog.py", memory_mb=256)


def _processes_with(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and token in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("mode", ["namespaces", "session"])
def test_timeout_kills_the_process_tree__setsid_children_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Failure guarded: a child that called setsid() outlived the introspection."""
    if mode == "namespaces" and not (os.geteuid() == 0 and sandbox.namespaces_work()):
        if os.environ.get("CI") == "true":
            pytest.fail("the namespace sandbox needs root and unshare (CI=true)")
        pytest.skip("needs root and working namespaces")
    if mode == "session":
        monkeypatch.setattr(sandbox, "namespaces_work", lambda: False)
    token = f"sleep_forever_{uuid.uuid4().hex}"
    script = tmp_path / f"{token}.py"
    shutil.copy(SCRIPTS / "sleep_forever.py", script)
    started = time.monotonic()
    try:
        with pytest.raises(IntrospectionError) as info:
            introspect_script(
                str(script),
                interpreter=sys.executable,
                timeout_s=3,
                memory_mb=512,
                user="root" if mode == "session" else None,  # /root may be 0700 here
            )
        assert info.value.message == "reading the script's parser took longer than 3s"
        assert time.monotonic() - started < DEADLINE_S
        deadline = time.monotonic() + DEADLINE_S
        while _processes_with(token) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_with(token) == []
    finally:
        for proc in _processes_with(token):
            proc.kill()


def test_script_never_runs_in_the_calling_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "scripts" / "hostile.py"
    script.parent.mkdir()
    shutil.copy(SCRIPTS / "hostile.py", script)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("JOBFERRY_TEST_SECRET", "s3cret")
    modules_before = set(sys.modules)

    spec = introspect(script)

    assert spec.description == "Looks harmless."
    assert [param.dest for param in spec.params] == ["name"]
    assert list(cwd.iterdir()) == []  # the marker went to the child's own directory
    assert not hasattr(builtins, "JOBFERRY_HOSTILE")
    assert "JOBFERRY_HOSTILE" not in os.environ
    assert not any("hostile" in name for name in set(sys.modules) - modules_before)
    assert list(script.parent.iterdir()) == [script]  # it ran on a copy


def test_script_runs_unprivileged_in_a_scratch_dir_with_a_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failure guarded: the script's top-level code ran as root (issue #10 item 8)."""
    script = tmp_path / "tell.py"
    script.write_text(
        "import json, os\n"
        "print(json.dumps({'pid': os.getpid(), 'uid': os.getuid(), 'gid': os.getgid(),\n"
        "    'groups': os.getgroups(), 'cwd': os.getcwd(), 'files': os.listdir('.'),\n"
        "    'env': sorted(os.environ)}), flush=True)\n"
        "raise SystemExit(7)\n"
    )
    monkeypatch.setenv("JOBFERRY_TEST_SECRET", "s3cret")
    with pytest.raises(IntrospectionError) as info:
        introspect(script)
    seen = json.loads(info.value.details["output"].splitlines()[0])
    assert seen["pid"] != os.getpid()
    assert seen["cwd"] != os.getcwd() and seen["files"] == []
    assert not os.path.exists(seen["cwd"])  # the scratch directory is deleted
    allowed = {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE", sandbox.MARKER}
    assert set(seen["env"]) <= allowed
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        assert (seen["uid"], seen["gid"], seen["groups"]) == (nobody.pw_uid, nobody.pw_gid, [])


def test_unreadable_result_mentions_output(tmp_path: Path) -> None:
    script = tmp_path / "kills_itself.py"
    script.write_text(
        "import os, signal\nprint('about to die', flush=True)\nos.kill(os.getpid(), 9)\n"
    )
    with pytest.raises(IntrospectionError, match="SIGKILL") as info:
        introspect(script)
    assert "about to die" in info.value.details["output"]


def test_boolean_optional_and_custom_action(tmp_path: Path) -> None:
    script = tmp_path / "modern.py"
    script.write_text(
        "import argparse\n"
        "class Upper(argparse.Action):\n"
        "    def __call__(self, parser, namespace, values, option_string=None):\n"
        "        setattr(namespace, self.dest, values.upper())\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--cache', action=argparse.BooleanOptionalAction, default=True)\n"
        "p.add_argument('--color', action=argparse.BooleanOptionalAction)\n"
        "p.add_argument('--shout', action=Upper)\n"
        "p.add_argument('--big', type=int, choices=range(5000))\n"
        "p.parse_args()\n"
    )
    params = by_dest(introspect(script))
    assert (params["cache"].action, params["cache"].option_strings) == (
        "store_false",
        ("--no-cache",),
    )
    assert (params["color"].action, params["color"].option_strings) == ("store_true", ("--color",))
    assert params["shout"].action == "store"
    assert params["big"].choices is None  # too many to list
