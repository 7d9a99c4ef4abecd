"""A tool-run payload's ``inputs`` -> the command a script is run with.

``convert_inputs`` turns Galaxy's ``inputs`` object into the same command string
a Wooey client would send (options by their long name, flags present or absent,
datasets as upload fields), so a tool run is validated exactly as a Wooey
submission is. Pure functions over a ``ScriptSpec``: no store, no files.

This is behaviour, not a wire shape, so it lives in services: which parameter a
name selects, what a value means for each argparse action, and the cap on
repeated flags decide what runs (``POST /api/tools``) and which earlier jobs
match (``POST /api/jobs/search``). How tools and their inputs are *shown* is
``jobferry.api.galaxy.tools_json``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobferry.argspec.command import preferred_option
from jobferry.argspec.introspect import ParamSpec, ScriptSpec
from jobferry.errors import RequestError, ValidationError
from jobferry.services.galaxy import check_id
from jobferry.staging.json_body import parse_json

#: Input keys clients send that are not parameters (ignored).
_META_INPUTS = frozenset({"rerun_remap_job_id", "__job_resource", "use_cached_job"})
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


@dataclass(frozen=True)
class ConvertedInputs:
    """Galaxy ``inputs`` as a command string plus the datasets it names, by field."""

    command: str
    datasets: dict[str, str]


def bad_input(name: str, message: str) -> ValidationError:
    return ValidationError(f"{name}: {message}", errors={name: [message]})


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise bad_input(name, "Enter true or false.")


def _scalar_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise bad_input(name, "Enter a single value.")


def _dataset_ids(name: str, value: Any) -> list[str]:
    """Dataset references: ``{"src": "hda", "id"}``, a list of those, or Galaxy's
    ``{"values": [...]}`` (with or without ``batch``)."""
    if isinstance(value, Mapping) and "values" in value:
        if value.get("batch"):
            raise bad_input(name, "Batch mode is not supported.")
        return [i for item in value["values"] or [] for i in _dataset_ids(name, item)]
    if isinstance(value, list):
        return [i for item in value for i in _dataset_ids(name, item)]
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        if value.get("src", "hda") not in ("hda", "ldda"):
            raise bad_input(name, "Only datasets (src: hda) can be given.")
        return [check_id(value["id"], "dataset")]
    raise bad_input(name, 'Give a dataset as {"src": "hda", "id": "<dataset id>"}.')


def _occurrence(option: str, values: list[str], prefixes: str) -> list[str]:
    if len(values) != 1:
        return [option, *values]
    text = values[0]
    if len(option) > 2:
        return [f"{option}={text}"]
    if text[:1] and text[0] in prefixes:
        return [option + text]
    return [option, text]


def convert_inputs(
    spec: ScriptSpec, inputs: Mapping[str, Any], max_tokens: int | None = None
) -> ConvertedInputs:
    """Galaxy tool inputs -> the command string (and the datasets it uses, by field).

    Parameters are named by dest (``exit_code``) or by their display name
    (``exit-code``). Raises ValidationError for unknown names and wrong values,
    and for a count above *max_tokens* (``{"quiet": 100000000}`` would otherwise
    become a hundred million tokens before the command's own cap could apply).
    """
    by_name: dict[str, ParamSpec] = {}
    for param in spec.params:
        by_name.setdefault(param.dest, param)
    for param in spec.params:
        by_name.setdefault(param.display_name, param)
        for option in param.option_strings:
            by_name.setdefault(option.lstrip(option[0]), param)
    chosen: dict[str, tuple[ParamSpec, Any]] = {}
    unknown = sorted(str(k) for k in inputs if k not in by_name and k not in _META_INPUTS)
    if unknown:
        raise ValidationError(
            f"unknown parameter(s): {', '.join(unknown)}",
            errors={k: ["Unknown parameter."] for k in unknown},
        )
    for key, value in inputs.items():
        if key in _META_INPUTS or value is None:
            continue
        param = by_name[key]
        if param.dest in chosen:
            raise bad_input(key, "This parameter is given twice.")
        chosen[param.dest] = (param, value)
    prefixes = "".join({option[0] for p in spec.params for option in p.option_strings}) or "-"
    args: list[str] = []
    positionals: list[str] = []
    datasets: dict[str, str] = {}
    for param in spec.params:
        if param.dest not in chosen:
            continue
        _, value = chosen[param.dest]
        name = param.dest
        if param.is_input_file:
            tokens = []
            for dataset_id in _dataset_ids(name, value):
                field = f"dataset{len(datasets)}"
                datasets[field] = dataset_id
                tokens.append(field)
            groups: list[list[str]] = (
                [[t] for t in tokens] if param.action == "append" else [tokens]
            )
        elif not param.takes_values:
            option = preferred_option(param)
            if param.action == "count":
                if isinstance(value, bool) or not isinstance(value, int | str):
                    raise bad_input(name, "Enter a whole number.")
                try:
                    times = int(value)
                except ValueError:
                    raise bad_input(name, "Enter a whole number.") from None
                if max_tokens is not None and times > max_tokens:
                    raise bad_input(
                        name,
                        f"Ensure this value is at most {max_tokens} (scripts.max_command_tokens).",
                    )
                args.extend([option] * max(times, 0))
            elif param.action == "append_const":
                times = len(value) if isinstance(value, list) else int(_as_bool(name, value))
                args.extend([option] * times)
            elif param.action == "store_const":
                given = value == param.const
                if given or (isinstance(value, bool | str) and _as_bool(name, value)):
                    args.append(option)
            elif _as_bool(name, value) == (param.action == "store_true"):
                args.append(option)
            continue
        elif isinstance(value, list):
            items = [
                [_scalar_text(name, v) for v in item]
                if isinstance(item, list)
                else [_scalar_text(name, item)]
                for item in value
            ]
            if param.action == "append":
                groups = items
            else:
                groups = [[text for item in items for text in item]]
        else:
            groups = [[_scalar_text(name, value)]]
        if param.positional:
            positionals.extend(text for group in groups for text in group)
            continue
        option = preferred_option(param)
        for group in groups:
            if group:
                args.extend(_occurrence(option, group, prefixes))
    tokens = args + (["--", *positionals] if positionals else [])
    return ConvertedInputs(command=shlex.join(tokens), datasets=datasets)


def payload_inputs(payload: Mapping[str, Any]) -> dict[str, Any]:
    inputs = payload.get("inputs")
    if inputs is None:
        return {}
    if isinstance(inputs, str):
        try:
            inputs = parse_json(inputs, max_bytes=None, empty={}, what="inputs")
        except RequestError as exc:
            raise bad_input("inputs", f"inputs must be a JSON object: {exc.message}") from None
    if not isinstance(inputs, dict):
        raise bad_input("inputs", "inputs must be an object.")
    return inputs


def resources_of(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """jobferry's extension: ``"resources": {"destination", "cores", ...}`` in the payload."""
    raw = payload.get("resources")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise bad_input("resources", "Expected an object of destination/cores/memory_mb/gpus/...")
    return raw


def text_field(payload: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        if required:
            raise bad_input(key, "This field is required.")
        return None
    if not isinstance(value, str | int):
        raise bad_input(key, "Enter a string.")
    return str(value)
