"""Registered scripts as Galaxy tools: listing, describing, running, searching, rerunning.

``POST /api/tools`` turns Galaxy's ``inputs`` object into the same command
string a Wooey client would send (options by their long name, flags present or
absent, datasets as upload fields) and submits it through ``JobService.submit``,
so validation is exactly the Wooey face's. Datasets given as
``{"src": "hda", "id": ...}`` are the caller's earlier job files: each is
copied into a private temporary directory and handed over as an upload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from jobferry.argspec.introspect import ParamSpec, ScriptSpec
from jobferry.errors import NotFoundError, RequestError, ValidationError
from jobferry.services.core import Core, Principal
from jobferry.services.galaxy import (
    DEFAULT_SEARCH_STATES,
    GalaxyService,
    check_id,
    dataset_names,
    job_input_rows,
    tool_version,
)
from jobferry.services.jobs import JobService, SubmitRequest
from jobferry.services.routing import parse_request
from jobferry.services.scripts import slugify
from jobferry.staging.forms import UploadedFile
from jobferry.staging.json_body import parse_json
from jobferry.staging.paths import safe_filename
from jobferry.store.models import Job, JobFile, Script, ScriptVersion

logger = logging.getLogger(__name__)

#: Input keys clients send that are not parameters (ignored).
_META_INPUTS = frozenset({"rerun_remap_job_id", "__job_resource", "use_cached_job"})
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


@dataclass(frozen=True)
class ToolRow:
    """A script and one of its versions: what a Galaxy tool is here."""

    script_id: str
    slug: str
    name: str
    group: str
    description: str | None
    version_id: str
    version: str
    iteration: int
    is_default: bool
    spec_data: dict[str, Any]

    @property
    def tool_version(self) -> str:
        return tool_version(self.version, self.iteration) or self.version

    @property
    def spec(self) -> ScriptSpec:
        return ScriptSpec.from_dict(self.spec_data)


@dataclass(frozen=True)
class ConvertedInputs:
    """Galaxy ``inputs`` as a command string plus the datasets it names, by field."""

    command: str
    datasets: dict[str, str]


def _bad(name: str, message: str) -> ValidationError:
    return ValidationError(f"{name}: {message}", errors={name: [message]})


def preferred_option(param: ParamSpec) -> str:
    """The first long option (``--name``), else the first option string."""
    for option in param.option_strings:
        if len(option) > 2 and option[1] == option[0]:
            return option
    for option in param.option_strings:
        if len(option) > 2:
            return option
    return param.option_strings[0]


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(name, "Enter true or false.")


def _scalar_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise _bad(name, "Enter a single value.")


def _dataset_ids(name: str, value: Any) -> list[str]:
    """Dataset references: ``{"src": "hda", "id"}``, a list of those, or Galaxy's
    ``{"values": [...]}`` (with or without ``batch``)."""
    if isinstance(value, Mapping) and "values" in value:
        if value.get("batch"):
            raise _bad(name, "Batch mode is not supported.")
        return [i for item in value["values"] or [] for i in _dataset_ids(name, item)]
    if isinstance(value, list):
        return [i for item in value for i in _dataset_ids(name, item)]
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        if value.get("src", "hda") not in ("hda", "ldda"):
            raise _bad(name, "Only datasets (src: hda) can be given.")
        return [check_id(value["id"], "dataset")]
    raise _bad(name, 'Give a dataset as {"src": "hda", "id": "<dataset id>"}.')


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
            raise _bad(key, "This parameter is given twice.")
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
                    raise _bad(name, "Enter a whole number.")
                try:
                    times = int(value)
                except ValueError:
                    raise _bad(name, "Enter a whole number.") from None
                if max_tokens is not None and times > max_tokens:
                    raise _bad(
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


def state_inputs(
    spec: ScriptSpec, params: Mapping[str, Any], files: list[JobFile]
) -> dict[str, Any]:
    """A job's parameters as ``POST /api/tools`` inputs (``build_for_rerun``)."""
    by_param: dict[str, list[str]] = {}
    for _, job_file in dataset_names(files, "input"):
        if job_file.param:
            by_param.setdefault(job_file.param, []).append(job_file.id)
    state: dict[str, Any] = {}
    for param in spec.params:
        if param.is_input_file:
            ids = by_param.get(param.dest)
            if not ids:
                continue
            refs = [{"src": "hda", "id": i} for i in ids]
            single = param.nargs is None and param.action == "store"
            state[param.dest] = refs[0] if single and len(refs) == 1 else refs
        elif param.dest in params:
            state[param.dest] = params[param.dest]
    return state


def _param_description(param: ParamSpec) -> dict[str, Any]:
    """One tool input in the rough shape of Galaxy's tool parameter dicts."""
    multiple = param.nargs in ("*", "+") or isinstance(param.nargs, int) and param.nargs > 1
    multiple = multiple or param.action in ("append", "extend")
    data: dict[str, Any] = {
        "name": param.dest,
        "label": param.display_name,
        "argument": None if param.positional else preferred_option(param),
        "help": param.help or "",
        "optional": not param.required and not (param.positional and param.nargs is None),
        "hidden": False,
        "is_dynamic": False,
        "refresh_on_change": False,
        "multiple": multiple,
        "value": param.default,
    }
    if param.is_input_file:
        data.update(model_class="DataToolParameter", type="data", extensions=["data"])
        data["value"] = None
    elif param.is_flag or param.action == "store_const":
        data.update(
            model_class="BooleanToolParameter",
            type="boolean",
            truevalue=preferred_option(param),
            falsevalue="",
            value=bool(param.default) if param.action != "store_const" else False,
        )
    elif param.action == "count":
        data.update(model_class="IntegerToolParameter", type="integer", min=0, max=None)
    elif param.choices is not None:
        data.update(
            model_class="SelectToolParameter",
            type="select",
            options=[[str(c), str(c), c == param.default] for c in param.choices],
        )
    elif param.type == "int":
        data.update(model_class="IntegerToolParameter", type="integer", min=None, max=None)
    elif param.type == "float":
        data.update(model_class="FloatToolParameter", type="float", min=None, max=None)
    else:
        data.update(model_class="TextToolParameter", type="text", area=False)
    return data


def tool_io(spec: ScriptSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [_param_description(p) for p in spec.params]
    outputs = [
        {
            "model_class": "ToolOutput",
            "name": p.dest,
            "format": "data",
            "label": p.help or p.display_name,
            "hidden": False,
            "default_name": p.default if isinstance(p.default, str) else None,
        }
        for p in spec.params
        if p.is_output_file
    ]
    return inputs, outputs


def _payload_inputs(payload: Mapping[str, Any]) -> dict[str, Any]:
    inputs = payload.get("inputs")
    if inputs is None:
        return {}
    if isinstance(inputs, str):
        try:
            inputs = parse_json(inputs, max_bytes=None, empty={}, what="inputs")
        except RequestError as exc:
            raise _bad("inputs", f"inputs must be a JSON object: {exc.message}") from None
    if not isinstance(inputs, dict):
        raise _bad("inputs", "inputs must be an object.")
    return inputs


def _resources(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """jobferry's extension: ``"resources": {"destination", "cores", ...}`` in the payload."""
    raw = payload.get("resources")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _bad("resources", "Expected an object of destination/cores/memory_mb/gpus/...")
    return raw


def _text(payload: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        if required:
            raise _bad(key, "This field is required.")
        return None
    if not isinstance(value, str | int):
        raise _bad(key, "Enter a string.")
    return str(value)


class GalaxyToolService:
    def __init__(self, core: Core, jobs: JobService, galaxy: GalaxyService) -> None:
        self.core = core
        self.jobs = jobs
        self.galaxy = galaxy

    # --- tools ------------------------------------------------------------------------

    def _rows(self, slug: str | None = None) -> list[ToolRow]:
        """Active versions of active scripts (of one slug, or all), oldest first."""
        stmt = (
            select(Script, ScriptVersion)
            .join(ScriptVersion, ScriptVersion.script_id == Script.id)
            .where(Script.is_active, ScriptVersion.is_active)
        )
        if slug is not None:
            stmt = stmt.where(Script.slug == slug)
        stmt = stmt.order_by(Script.group_name, Script.name, ScriptVersion.created_at)
        with self.core.sessions.begin() as session:
            return [
                ToolRow(
                    script_id=script.id,
                    slug=script.slug,
                    name=script.name,
                    group=script.group_name,
                    description=script.description,
                    version_id=version.id,
                    version=version.version,
                    iteration=version.iteration,
                    is_default=bool(version.is_default),
                    spec_data=version.spec,
                )
                for script, version in session.execute(stmt).all()
            ]

    def resolve(self, slug: str, version: str | None = None) -> ToolRow:
        """The tool's default version, or the one named by a ``tool_version`` string."""
        rows = self._rows(slug)
        if not rows:
            raise NotFoundError(f"Tool {slug!r} not found.")
        for row in rows:
            if (row.tool_version == version) if version is not None else row.is_default:
                return row
        message = (
            f"Tool {slug!r} has no default version."
            if version is None
            else f"Tool {slug!r} has no version {version!r}."
        )
        raise NotFoundError(message)

    @staticmethod
    def describe(row: ToolRow) -> dict[str, Any]:
        return {
            "model_class": "Tool",
            "id": row.slug,
            "name": row.name,
            "version": row.tool_version,
            "description": row.description or "",
            "labels": [],
            "edam_operations": [],
            "edam_topics": [],
            "hidden": "",
            "is_workflow_compatible": True,
            "xrefs": [],
            "link": f"/tool_runner?tool_id={row.slug}",
            "min_width": -1,
            "target": "galaxy_main",
            "panel_section_id": slugify(row.group),
            "panel_section_name": row.group,
            "form_style": "regular",
        }

    def list_tools(self, *, in_panel: bool = False, q: str | None = None) -> list[Any]:
        """``GET /api/tools``: every active script's default version (``q``: matching ids)."""
        rows = [r for r in self._rows() if r.is_default]
        if q is not None:
            needle = q.lower()
            return [
                r.slug
                for r in rows
                if needle in r.slug.lower()
                or needle in r.name.lower()
                or needle in (r.description or "").lower()
            ]
        tools = [self.describe(r) for r in rows]
        if not in_panel:
            return tools
        sections: dict[str, dict[str, Any]] = {}
        for tool in tools:
            section = sections.setdefault(
                tool["panel_section_id"],
                {
                    "model_class": "ToolSection",
                    "id": tool["panel_section_id"],
                    "name": tool["panel_section_name"],
                    "version": "",
                    "elems": [],
                },
            )
            section["elems"].append(tool)
        return list(sections.values())

    def show_tool(
        self, slug: str, *, version: str | None = None, io_details: bool = False
    ) -> dict[str, Any]:
        row = self.resolve(slug, version)
        data = self.describe(row)
        data["versions"] = [r.tool_version for r in self._rows(slug)]
        if io_details:
            data["inputs"], data["outputs"] = tool_io(row.spec)
        return data

    # --- running ----------------------------------------------------------------------

    def _stage(self, principal: Principal, datasets: Mapping[str, str]) -> list[UploadedFile]:
        """Copy the referenced job files into a private temp dir, as uploads."""
        if not datasets:
            return []
        files = self.galaxy.datasets(principal, list(datasets.values()))
        sources = [self.galaxy.dataset_file(f) for f in files]
        self.core.tmp_path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="galaxy-", dir=self.core.tmp_path))
        uploads: list[UploadedFile] = []
        try:
            for index, (field, job_file, source) in enumerate(
                zip(datasets, files, sources, strict=True)
            ):
                filename = job_file.name.rsplit("/", 1)[-1]
                target = tmp / f"{index}-{safe_filename(filename)}"
                digest = hashlib.sha256()
                size = 0
                with open(source, "rb") as src, open(target, "xb") as dst:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
                        size += len(chunk)
                uploads.append(UploadedFile(field, filename, target, size, digest.hexdigest()))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return uploads

    def run_tool(self, principal: Principal, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /api/tools``: submit one job of the tool; Galaxy's answer shape."""
        slug = _text(payload, "tool_id", required=True)
        assert slug is not None
        history_id = _text(payload, "history_id")
        if history_id is not None and len(history_id) > 64:
            raise _bad("history_id", "Ensure this value has at most 64 characters.")
        row = self.resolve(slug, _text(payload, "tool_version"))
        spec = row.spec
        converted = convert_inputs(
            spec, _payload_inputs(payload), self.jobs.checker.limits.max_tokens
        )
        uploads = self._stage(principal, converted.datasets)
        request = SubmitRequest(
            slug=row.slug,
            job_name=row.name[:255],
            command=converted.command,
            version=row.version,
            iteration=str(row.iteration),
            history_id=history_id,
            resources=parse_request(_resources(payload)),
            tool_id=slug,
        )
        try:
            job_id = self.jobs.submit(principal, request, uploads)
        finally:
            if uploads:
                shutil.rmtree(uploads[0].path.parent, ignore_errors=True)
        return {
            "outputs": [],
            "output_collections": [],
            "jobs": self.galaxy.summaries(principal, [job_id]),
            "implicit_collections": [],
            "produces_entry_points": False,
        }

    def build_for_rerun(self, principal: Principal, job_id: str) -> dict[str, Any]:
        """``GET /api/jobs/{id}/build_for_rerun``: what bioblend's ``rerun_job`` reads."""
        view = self.galaxy.view(principal, job_id)
        job = view.job
        with self.core.sessions.begin() as session:
            found = session.execute(
                select(Script, ScriptVersion)
                .join(ScriptVersion, ScriptVersion.script_id == Script.id)
                .where(ScriptVersion.id == job.script_version_id)
            ).first()
        if found is None:
            raise NotFoundError("The tool of this job no longer exists.")
        script, version = found
        spec = ScriptSpec.from_dict(version.spec)
        inputs, outputs = tool_io(spec)
        return {
            "id": script.slug,
            "name": script.name,
            "version": tool_version(version.version, version.iteration),
            "description": script.description or "",
            "history_id": job.history_id,
            "job_id": job.id,
            "job_remap": False,
            "state_inputs": state_inputs(spec, job.params or {}, list(view.files)),
            "inputs": inputs,
            "outputs": outputs,
        }

    # --- search -----------------------------------------------------------------------

    def search_jobs(self, principal: Principal, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``POST /api/jobs/search``: the caller's jobs of the same tool version with the
        same parameters and inputs of the same content (sha256)."""
        slug = _text(payload, "tool_id", required=True)
        assert slug is not None
        if "inputs" not in payload:
            raise _bad("inputs", "This field is required.")
        row = self.resolve(slug, _text(payload, "tool_version"))
        state = _text(payload, "state")
        states = [state] if state else list(DEFAULT_SEARCH_STATES)
        spec = row.spec
        try:
            converted = convert_inputs(
                spec, _payload_inputs(payload), self.jobs.checker.limits.max_tokens
            )
            files = self.galaxy.datasets(principal, list(converted.datasets.values()))
            fake = {field: f"/nonexistent/{field}" for field in converted.datasets}
            built = self.jobs.checker.check(spec, converted.command, fake)
        except ValidationError:
            return []
        file_dests = {p.dest for p in spec.params if p.is_input_file}
        want_params = json.loads(
            json.dumps({k: v for k, v in built.values.items() if k not in file_dests})
        )
        dest_of = {path: dest for dest, paths in built.input_files.items() for path in paths}
        sha_of = dict(zip(converted.datasets, (f.sha256 for f in files), strict=True))
        want_inputs = Counter(
            (dest_of.get(fake[field]), sha_of[field]) for field in converted.datasets
        )
        with self.core.sessions.begin() as session:
            candidates = session.execute(
                select(Job.id, Job.params)
                .where(
                    Job.user_id == principal.user_id,
                    Job.script_version_id == row.version_id,
                    Job.state.in_(states),
                )
                .order_by(Job.updated_at.desc(), Job.id.desc())
            ).all()
            same_params = [
                job_id
                for job_id, params in candidates
                if {k: v for k, v in (params or {}).items() if k not in file_dests} == want_params
            ]
            inputs = job_input_rows(session, same_params)
        matching = [i for i in same_params if Counter(inputs[i]) == want_inputs]
        return [self.galaxy.show_job(principal, job_id) for job_id in matching]
