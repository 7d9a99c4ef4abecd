"""Tests of checking ``command`` strings against a script's parameters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobferry.argspec.command import BuiltCommand, build_command
from jobferry.argspec.introspect import MutexGroup, ParamSpec, ScriptSpec, introspect_script
from jobferry.errors import ValidationError

pytestmark = [pytest.mark.timeout(60), pytest.mark.engine_independent]

SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "scripts"
UPLOADS = {"data": "/uploads/data.csv", "more": "/uploads/more.txt"}
REQUIRED = "--name bob data 5"  # the minimal valid command for all_actions.py


@pytest.fixture(scope="module")
def spec() -> ScriptSpec:
    return introspect_script(
        str(SCRIPTS / "all_actions.py"), interpreter=sys.executable, timeout_s=20, memory_mb=512
    )


def build(spec: ScriptSpec, command: str, uploads: dict[str, str] | None = None) -> BuiltCommand:
    return build_command(spec, command, UPLOADS if uploads is None else uploads)


def errors_of(spec: ScriptSpec, command: str) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        build(spec, command)
    return info.value.errors


def param(dest: str, *options: str, **fields: Any) -> ParamSpec:
    values: dict[str, Any] = {
        "dest": dest,
        "option_strings": options,
        "positional": not options,
        "action": "store",
        "nargs": None,
        "type": "str",
        "file_mode": None,
        "is_output": False,
        "choices": None,
        "default": None,
        "const": None,
        "required": not options,
        "help": None,
        "metavar": None,
        "group": None,
    }
    values.update(fields)
    return ParamSpec(**values)


def test_minimal_command(spec: ScriptSpec) -> None:
    built = build(spec, REQUIRED)
    assert built.args == ("--name=bob", "--", "/uploads/data.csv", "5")
    assert built.values == {"name": "bob", "infile": "data", "count": 5}
    assert built.input_files == {"infile": ["/uploads/data.csv"]}
    assert built.output_files == ()


def test_long_and_short_names(spec: ScriptSpec) -> None:
    assert build(spec, "-n bob data 5").args == build(spec, "--name bob data 5").args
    assert build(spec, "--name=bob data 5").args == build(spec, "-n bob data 5").args
    assert build(spec, "-q data 5 -n x").values["quiet"] == 1


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--verbose", True),
        ("-v", True),
        ("--verbose true", True),
        ("--verbose TRUE", True),
        ("-v yes", True),
        ("--verbose 1", True),
        ("--verbose=true", True),
        ("--verbose false", False),
        ("--verbose False", False),
        ("-v no", False),
        ("--verbose 0", False),
        ("--verbose=false", False),
        ("", False),
    ],
)
def test_store_true(spec: ScriptSpec, flag: str, expected: bool) -> None:
    built = build(spec, f"{flag} {REQUIRED}")
    assert ("--verbose" in built.args) is expected
    assert built.values.get("verbose", False) is expected


def test_store_false_and_const(spec: ScriptSpec) -> None:
    built = build(spec, f"--no-color true --fast --mark --mark {REQUIRED}")
    assert built.args[:5] == ("--name=bob", "--no-color", "--fast", "--mark", "--mark")
    assert built.values["color"] is False
    assert built.values["speed"] == "fast"
    assert built.values["marks"] == ["m", "m"]
    assert "color" not in build(spec, f"--no-color false {REQUIRED}").values


def test_flag_word_after_double_dash_is_positional(spec: ScriptSpec) -> None:
    built = build(spec, "--name bob --verbose -- data 5 true")
    assert built.values["extra"] == "true"
    assert built.values["verbose"] is True


def test_bad_flag_word(spec: ScriptSpec) -> None:
    errors = errors_of(spec, f"--verbose=maybe {REQUIRED}")
    assert errors == {"command": "argument -v/--verbose: ignored explicit argument 'maybe'"}


def test_append_count_extend(spec: ScriptSpec) -> None:
    built = build(spec, f"--tag a --tag=-b -qq --quiet --item x y --item z {REQUIRED}")
    assert built.values["tag"] == ["a", "-b"]
    assert built.values["quiet"] == 3
    assert built.values["item"] == ["x", "y", "z"]
    args = list(built.args)
    assert args[1:3] == ["--tag=a", "--tag=-b"]
    assert args.count("--quiet") == 3
    assert args[args.index("--item") :][:4] == ["--item", "x", "y", "z"]


def test_nargs(spec: ScriptSpec) -> None:
    built = build(spec, f"--maybe --many --some 1 -2 --pair x y {REQUIRED}")
    assert built.values["maybe"] == "yes"  # bare: the const
    assert built.values["many"] == []
    assert built.values["some"] == [1, -2]
    assert built.values["pair"] == ["x", "y"]
    assert "--maybe" in built.args
    assert build(spec, f"--maybe=no {REQUIRED}").values["maybe"] == "no"
    errors = errors_of(spec, f"--pair x {REQUIRED}")
    assert errors == {"command": "argument --pair: expected 2 arguments"}


def test_types_are_converted(spec: ScriptSpec) -> None:
    built = build(spec, f"--level 2 --ratio 1e3 --threads 8 {REQUIRED}")
    assert built.values["level"] == 2 and built.values["ratio"] == 1000.0
    assert "--level=2" in built.args and "--ratio=1000.0" in built.args
    json.dumps(built.values)


def test_value_errors_keyed_by_readable_name(spec: ScriptSpec) -> None:
    errors = errors_of(spec, "--name bob --level 7 --ratio nan --threads y --mode medium data x")
    assert errors == {
        "level": ["Select a valid choice. 7 is not one of the available choices."],
        "ratio": ["Enter a number."],
        "threads": ["Enter a whole number."],
        "mode": ["Select a valid choice. medium is not one of the available choices."],
        "count": ["Enter a whole number."],
    }


def test_unknown_option(spec: ScriptSpec) -> None:
    assert errors_of(spec, f"--bogus {REQUIRED}") == {"command": "unrecognized arguments: --bogus"}
    # No abbreviations: only the declared option strings are known.
    assert errors_of(spec, f"--verb {REQUIRED}") == {"command": "unrecognized arguments: --verb"}


def test_missing_required(spec: ScriptSpec) -> None:
    assert errors_of(spec, "data 5") == {
        "command": "the following arguments are required: -n/--name"
    }
    assert errors_of(spec, "--name bob") == {
        "command": "the following arguments are required: infile, count"
    }
    assert errors_of(spec, "") == {
        "command": "the following arguments are required: -n/--name, infile, count"
    }


def test_optional_positional(spec: ScriptSpec) -> None:
    assert "extra" not in build(spec, REQUIRED).values
    built = build(spec, f"{REQUIRED} more")
    assert built.values["extra"] == "more"
    assert built.args[-4:] == ("--", "/uploads/data.csv", "5", "more")


def test_file_uploads(spec: ScriptSpec) -> None:
    built = build(spec, "--input more -n bob data 5")
    assert built.input_files == {"input": ["/uploads/more.txt"], "infile": ["/uploads/data.csv"]}
    assert "--input=/uploads/more.txt" in built.args
    assert built.values["input"] == "more"  # the name the user gave


def test_missing_file_references_are_collected(spec: ScriptSpec) -> None:
    errors = errors_of(spec, "--input nope -n bob /etc/passwd 5")
    assert errors == {
        "input": ["Referenced file could not be found."],
        "infile": ["Referenced file could not be found."],
    }


def test_output_files(spec: ScriptSpec) -> None:
    built = build(spec, f"-o results/out.txt --log - {REQUIRED}")
    assert built.output_files == ("results/out.txt",)
    assert "--output=results/out.txt" in built.args and "--log=-" in built.args


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "a/..", "''"])
def test_hostile_output_paths(spec: ScriptSpec, name: str) -> None:
    errors = errors_of(spec, f"--output {name} {REQUIRED}")
    message = "Output file names must be relative paths inside the job directory."
    assert errors == {"output": [message]}


def test_hostile_strings_stay_literal(spec: ScriptSpec) -> None:
    built = build(spec, "--name '; rm -rf / #' data 5 '$(rm -rf /)'")
    assert built.args == ("--name=; rm -rf / #", "--", "/uploads/data.csv", "5", "$(rm -rf /)")
    assert build(spec, "--name `id` data 5").values["name"] == "`id`"


def test_values_starting_with_a_dash(spec: ScriptSpec) -> None:
    built = build(spec, "--name=--help data 5 -- -x")
    assert built.args == ("--name=--help", "--", "/uploads/data.csv", "5", "-x")


def test_unbalanced_quote(spec: ScriptSpec) -> None:
    assert errors_of(spec, "--name 'bob data 5") == {"command": "No closing quotation"}


def test_nul_byte(spec: ScriptSpec) -> None:
    assert "command" in errors_of(spec, "--name bo\0b data 5")


def test_mutually_exclusive(spec: ScriptSpec) -> None:
    errors = errors_of(spec, f"--json --csv {REQUIRED}")
    assert errors == {"command": "argument --csv: not allowed with argument --json"}
    assert build(spec, f"--json --csv false {REQUIRED}").values["json"] is True


def test_required_mutually_exclusive_group() -> None:
    spec = ScriptSpec(
        description=None,
        version=None,
        params=(
            param("speed", "--fast", action="store_const", const="F", required=False),
            param("speed", "--slow", action="store_const", const="S", required=False),
        ),
        mutually_exclusive=(MutexGroup(required=True, dests=("speed",)),),
    )
    with pytest.raises(ValidationError) as info:
        build(spec, "")
    assert info.value.errors == {"command": "one of the arguments --fast --slow is required"}
    assert build(spec, "--slow").values == {"speed": "S"}


def test_short_only_options_and_dash_values() -> None:
    spec = ScriptSpec(
        description=None,
        version=None,
        params=(param("x", "-x"), param("y", "-y", type="int", nargs="+", required=False)),
    )
    built = build(spec, "-x=-v -y -1 2")
    assert built.args == ("-x-v", "-y", "-1", "2")
    assert built.values == {"x": "-v", "y": [-1, 2]}


def test_shared_dest_appends_in_order() -> None:
    spec = ScriptSpec(
        description=None,
        version=None,
        params=(
            param("kinds", "--add-a", action="append_const", const="a", required=False),
            param("kinds", "--add-b", action="append_const", const="b", required=False),
        ),
    )
    built = build(spec, "--add-b --add-a --add-b")
    assert built.args == ("--add-a", "--add-b", "--add-b")
    assert built.values == {"kinds": ["a", "b", "b"]}


def test_rebuilt_args_run_the_real_script(spec: ScriptSpec, tmp_path: Path) -> None:
    data = tmp_path / "upload.csv"
    data.write_text("1,2\n")
    command = (
        "-n 'bob smith' -v --tag a -qq --item x y --level 3 --ratio 0.25 --some 4 -5 "
        "--pair p q --maybe -o out.txt --json -- data 7 '$(id)'"
    )
    built = build_command(spec, command, {"data": str(data)})
    script = str(SCRIPTS / "all_actions.py")
    result = subprocess.run(
        [sys.executable, script, *built.args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out = result.stdout
    for fragment in [
        "name='bob smith'",
        "verbose=True",
        "tag=['a']",
        "quiet=2",
        "item=['x', 'y']",
        "level=3",
        "ratio=0.25",
        "some=[4, -5]",
        "pair=['p', 'q']",
        "maybe='yes'",
        "json=True",
        "count=7",
        "extra='$(id)'",
        f"name='{data}'",
    ]:
        assert fragment in out
    assert (tmp_path / "out.txt").exists()
