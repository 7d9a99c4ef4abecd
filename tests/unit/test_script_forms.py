"""Tests of the browser form's values -> ``command`` (``services.script_forms``).

Every command built here is then checked by the API's own validator
(``argspec.command.build_command``), so what a form submits is what a Wooey
client sending that command would get."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from jobferry.argspec import command as api_command
from jobferry.argspec.introspect import ScriptSpec, introspect_script
from jobferry.errors import ValidationError
from jobferry.services import script_forms
from jobferry.services.script_forms import build_command, form_fields, prefill
from jobferry.staging.forms import UploadedFile

pytestmark = [pytest.mark.timeout(60), pytest.mark.engine_independent]

SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "scripts"


def introspect(name: str) -> ScriptSpec:
    return introspect_script(
        str(SCRIPTS / name), interpreter=sys.executable, timeout_s=20, memory_mb=512
    )


@pytest.fixture(scope="module")
def demo() -> ScriptSpec:
    return introspect("form_demo.py")


@pytest.fixture(scope="module")
def every() -> ScriptSpec:
    return introspect("all_actions.py")


def field(spec: ScriptSpec, dest: str) -> str:
    index = next(i for i, p in enumerate(spec.params) if p.dest == dest)
    return script_forms.field_name(index)


def form(spec: ScriptSpec, **values: Any) -> dict[str, list[str]]:
    """Form values by dest (a string, or a list for several values)."""
    return {
        field(spec, dest): value if isinstance(value, list) else [value]
        for dest, value in values.items()
    }


def files(spec: ScriptSpec, **counts: int) -> dict[str, int]:
    return {field(spec, dest): n for dest, n in counts.items()}


def uploads_for(spec: ScriptSpec, counts: dict[str, int]) -> dict[str, str]:
    """The upload map the API builds: each reference -> a path."""
    return {
        ref: f"/uploads/{ref}"
        for name, n in counts.items()
        for ref in script_forms.upload_refs(int(name[1:]), n)
    }


def run_through_api(spec: ScriptSpec, command: str, counts: dict[str, int]) -> dict[str, Any]:
    built = api_command.build_command(spec, command, uploads_for(spec, counts))
    return built.values


def form_errors(spec: ScriptSpec, values: dict[str, list[str]], counts: dict[str, int]) -> Any:
    with pytest.raises(ValidationError) as info:
        build_command(spec, values, counts)
    return info.value.errors


def test_each_type_becomes_its_option_and_the_api_reads_the_same_values(
    demo: ScriptSpec,
) -> None:
    counts = files(demo, data=1)
    values = form(
        demo, times="3", ratio="0.25", color="blue", shout="on", indent="4", words="a\nb c\n\n"
    )
    command = build_command(demo, values, counts)
    got = run_through_api(demo, command, counts)
    assert got["times"] == 3 and got["ratio"] == 0.25 and got["color"] == "blue"
    assert got["shout"] is True and got["indent"] == 4
    assert got["words"] == ["a", "b c"]  # one value per line, spaces kept inside a value
    assert got["data"] == script_forms.field_name(0)  # the upload's field name


def test_empty_fields_and_unchecked_flags_are_left_out(demo: ScriptSpec) -> None:
    counts = files(demo, data=1)
    command = build_command(demo, form(demo, times="", label="", color=""), counts)
    assert command == f"-- {field(demo, 'data')}"
    assert run_through_api(demo, command, counts) == {"data": field(demo, "data")}


def test_several_files_of_one_input_each_get_a_reference(demo: ScriptSpec) -> None:
    counts = files(demo, data=1, extra=3)
    command = build_command(demo, {}, counts)
    refs = script_forms.upload_refs(int(field(demo, "extra")[1:]), 3)
    assert shlex.split(command)[:4] == ["--extra", *refs]
    built = api_command.build_command(demo, command, uploads_for(demo, counts))
    assert built.input_files["extra"] == [f"/uploads/{r}" for r in refs]


@pytest.mark.parametrize(
    "hostile",
    [
        "it's; rm -rf / $(reboot) `id` && echo",
        '"quoted" \\ back\\slash',
        "--json",
        "-o /etc/passwd",
        "line\twith\ttabs",
        "ünïcødé ✓",
    ],
)
def test_hostile_values_stay_one_argument(demo: ScriptSpec, hostile: str) -> None:
    counts = files(demo, data=1)
    command = build_command(demo, form(demo, label=hostile), counts)
    got = run_through_api(demo, command, counts)
    assert got["label"] == hostile
    assert "json" not in got and "output" not in got


def test_numbers_and_choices_are_checked_next_to_their_field(demo: ScriptSpec) -> None:
    values = form(demo, times="two", ratio="nan", color="purple", indent="3")
    errors = form_errors(demo, values, files(demo, data=1))
    assert errors[field(demo, "times")] == [script_forms.WHOLE_NUMBER]
    assert errors[field(demo, "ratio")] == [script_forms.NUMBER]
    assert "not one of the available choices" in errors[field(demo, "color")][0]
    assert "not one of the available choices" in errors[field(demo, "indent")][0]


def test_a_required_file_or_value_missing_is_named(demo: ScriptSpec, every: ScriptSpec) -> None:
    assert form_errors(demo, {}, {}) == {field(demo, "data"): [script_forms.REQUIRED]}
    errors = form_errors(every, form(every, count="1"), files(every, infile=1))
    assert errors == {field(every, "name"): [script_forms.REQUIRED]}


def test_mutually_exclusive_options_are_refused_on_both_fields(demo: ScriptSpec) -> None:
    errors = form_errors(demo, form(demo, json="on", csv="on"), files(demo, data=1))
    assert set(errors) == {field(demo, "json"), field(demo, "csv")}
    assert errors[field(demo, "json")] == ["Give only one of: json, csv."]
    command = build_command(demo, form(demo, csv="on"), files(demo, data=1))
    assert run_through_api(demo, command, files(demo, data=1))["csv"] is True


def test_every_argparse_action_round_trips_through_the_api(every: ScriptSpec) -> None:
    counts = files(every, infile=1, input=1)
    values = form(
        every,
        name="-bob",  # a value starting with a dash
        verbose="on",
        color="on",  # --no-color: store_false
        speed="on",  # --fast: store_const
        tag="x\ny",  # append, one per line
        quiet="2",  # count
        item="a\nb",  # extend nargs=+
        level="3",
        mode="slow",
        many="",
        some="1\n2",
        pair="p\nq",  # nargs=2
        output="out/result.txt",
        marks="2",  # append_const twice
        count="7",
        extra="last",
        threads="4",
        json="on",
    )
    got = run_through_api(every, build_command(every, values, counts), counts)
    assert got == {
        "name": "-bob",
        "verbose": True,
        "color": False,
        "speed": "fast",
        "tag": ["x", "y"],
        "quiet": 2,
        "item": ["a", "b"],
        "level": 3,
        "mode": "slow",
        "some": [1, 2],
        "pair": ["p", "q"],
        "input": field(every, "input"),
        "output": "out/result.txt",
        "marks": ["m", "m"],
        "infile": field(every, "infile"),
        "count": 7,
        "extra": "last",
        "threads": 4,
        "json": True,
    }


def test_nargs_counts_are_checked(every: ScriptSpec) -> None:
    base = form(every, name="n", count="1")
    errors = form_errors(every, {**base, **form(every, pair="only-one")}, files(every, infile=1))
    assert "Give 2 values" in errors[field(every, "pair")][0]


def test_the_form_has_the_right_input_for_each_parameter(demo: ScriptSpec) -> None:
    fields = {f.param.dest: f for g in form_fields(demo) for f in g.fields}
    assert fields["data"].kind == "file" and fields["data"].required
    assert fields["extra"].kind == "file" and fields["extra"].multiple
    assert fields["times"].kind == "number" and fields["times"].step == "1"
    assert fields["ratio"].step == "any" and fields["ratio"].defaults == ("0.5",)
    assert fields["color"].kind == "select" and fields["color"].choices == ("red", "green", "blue")
    assert fields["shout"].kind == "checkbox" and fields["shout"].help == "Print in capitals."
    assert fields["words"].kind == "lines"
    assert fields["output"].kind == "output"
    assert fields["json"].mutex_with == ("csv",) and fields["json"].defaults == ()
    titles = [g.title for g in form_fields(demo)]
    assert titles == [None, "style"]


def test_a_jobs_stored_values_fill_the_form_again(demo: ScriptSpec) -> None:
    counts = files(demo, data=1)
    values = form(demo, times="5", color="red", shout="on", words="x\ny", label="it's")
    command = build_command(demo, values, counts)
    stored = run_through_api(demo, command, counts)
    again = prefill(demo, stored)
    assert again == values
    assert build_command(demo, again, counts) == command


def test_api_errors_are_put_next_to_the_parameter_they_name(demo: ScriptSpec) -> None:
    mapped = script_forms.field_errors(
        demo,
        {
            "times": ["Enter a whole number."],
            "command": "argument --csv: not allowed with argument --json",
            "job_name": ["This field is required."],
        },
    )
    assert mapped[field(demo, "times")] == ["Enter a whole number."]
    assert field(demo, "csv") in mapped and field(demo, "json") in mapped
    assert mapped["job_name"] == ["This field is required."]


def test_empty_file_inputs_are_dropped_and_several_files_renamed(tmp_path: Path) -> None:
    def upload(name: str, filename: str, size: int) -> UploadedFile:
        return UploadedFile(name, filename, tmp_path / filename, size)

    named, counts = script_forms.name_uploads(
        [upload("p0", "a.txt", 3), upload("p7", "", 0), upload("p7", "b", 1), upload("p7", "c", 0)]
    )
    assert [u.field for u in named] == ["p0", "p7", "p7.1"]
    assert counts == {"p0": 1, "p7": 2}


def test_a_value_starting_with_a_dash_stays_the_value_of_a_short_option() -> None:
    spec = ScriptSpec.from_dict(
        {
            "description": None,
            "version": None,
            "params": [
                {
                    "dest": "x",
                    "option_strings": ["-x"],
                    "positional": False,
                    "action": "store",
                    "nargs": None,
                    "type": "str",
                    "file_mode": None,
                    "is_output": False,
                    "choices": None,
                    "default": None,
                    "const": None,
                    "required": False,
                    "help": None,
                    "metavar": None,
                    "group": None,
                },
                {
                    "dest": "flag",
                    "option_strings": ["-f"],
                    "positional": False,
                    "action": "store_true",
                    "nargs": None,
                    "type": "bool",
                    "file_mode": None,
                    "is_output": False,
                    "choices": None,
                    "default": False,
                    "const": None,
                    "required": False,
                    "help": None,
                    "metavar": None,
                    "group": None,
                },
            ],
        }
    )
    command = build_command(spec, {"p0": ["-f"]}, {})
    assert run_through_api(spec, command, {}) == {"x": "-f"}


def test_the_catalogue_search_needs_every_word_and_skips_inactive_scripts() -> None:
    from jobferry.web.scripts import search_scripts

    def script(name: str, group: str, description: str, active: bool = True) -> dict[str, Any]:
        return {
            "script_name": name,
            "group": group,
            "slug": name.replace(" ", "-"),
            "script_description": description,
            "is_active": active,
            "default_version": {"script_version": "1"},
        }

    scripts = [
        script("word count", "Text", "Counts words."),
        script("line styler", "Text", "Styles LINES."),
        script("old lines", "Text", "Retired.", active=False),
    ]
    assert [s["slug"] for s in search_scripts(scripts, "")] == ["word-count", "line-styler"]
    assert [s["slug"] for s in search_scripts(scripts, "text LINES")] == ["line-styler"]
    assert search_scripts(scripts, "lines retired") == []
