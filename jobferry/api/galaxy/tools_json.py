"""Galaxy's tool shapes: a tool, the tool panel, its inputs and outputs, a rerun template.

Built from the services' ``ToolRecord``/``ToolParam`` (a registered script
version and its argparse parameters) and ``RerunRecord``. The parameter
descriptions follow the rough shape of Galaxy's tool parameter dicts
(``DataToolParameter``, ``BooleanToolParameter``, ...): enough for bioblend and
for a client to build a form, not Galaxy's full tool XML model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jobferry.api.galaxy.jobs_json import dataset_names, job_summary
from jobferry.services.records import (
    FileRecord,
    JobSummary,
    RerunRecord,
    ToolParam,
    ToolRecord,
)
from jobferry.services.scripts import slugify


def tool(row: ToolRecord) -> dict[str, Any]:
    """One tool as ``GET /api/tools`` lists it."""
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


def tool_panel(rows: Iterable[ToolRecord]) -> list[dict[str, Any]]:
    """``GET /api/tools?in_panel=true``: the tools in sections, one per script group."""
    sections: dict[str, dict[str, Any]] = {}
    for row in rows:
        described = tool(row)
        section = sections.setdefault(
            described["panel_section_id"],
            {
                "model_class": "ToolSection",
                "id": described["panel_section_id"],
                "name": described["panel_section_name"],
                "version": "",
                "elems": [],
            },
        )
        section["elems"].append(described)
    return list(sections.values())


def tool_detail(row: ToolRecord, versions: Sequence[str], *, io_details: bool) -> dict[str, Any]:
    """``GET /api/tools/{id}``: the tool, its versions, with ``io_details`` its inputs and
    outputs."""
    data = tool(row)
    data["versions"] = list(versions)
    if io_details:
        data["inputs"], data["outputs"] = tool_io(row.params())
    return data


def tool_run(jobs: Sequence[JobSummary]) -> dict[str, Any]:
    """``POST /api/tools``: what running a tool answers (its one job, nothing else)."""
    return {
        "outputs": [],
        "output_collections": [],
        "jobs": [job_summary(j) for j in jobs],
        "implicit_collections": [],
        "produces_entry_points": False,
    }


def _param_description(param: ToolParam) -> dict[str, Any]:
    """One tool input in the rough shape of Galaxy's tool parameter dicts."""
    multiple = param.nargs in ("*", "+") or isinstance(param.nargs, int) and param.nargs > 1
    multiple = multiple or param.action in ("append", "extend")
    data: dict[str, Any] = {
        "name": param.dest,
        "label": param.label,
        "argument": param.option,
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
            truevalue=param.option,
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


def tool_io(
    params: Sequence[ToolParam],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A script's parameters as a tool's inputs, and its output-file parameters as outputs."""
    inputs = [_param_description(p) for p in params]
    outputs = [
        {
            "model_class": "ToolOutput",
            "name": p.dest,
            "format": "data",
            "label": p.help or p.label,
            "hidden": False,
            "default_name": p.default if isinstance(p.default, str) else None,
        }
        for p in params
        if p.is_output_file
    ]
    return inputs, outputs


def state_inputs(
    params: Sequence[ToolParam], values: Mapping[str, Any], files: Sequence[FileRecord]
) -> dict[str, Any]:
    """A job's parameters as ``POST /api/tools`` inputs (``build_for_rerun``)."""
    by_param: dict[str, list[str]] = {}
    for _, job_file in dataset_names(files, "input"):
        if job_file.param:
            by_param.setdefault(job_file.param, []).append(job_file.id)
    state: dict[str, Any] = {}
    for param in params:
        if param.is_input_file:
            ids = by_param.get(param.dest)
            if not ids:
                continue
            refs = [{"src": "hda", "id": i} for i in ids]
            single = param.nargs is None and param.action == "store"
            state[param.dest] = refs[0] if single and len(refs) == 1 else refs
        elif param.dest in values:
            state[param.dest] = values[param.dest]
    return state


def rerun(record: RerunRecord) -> dict[str, Any]:
    """``GET /api/jobs/{id}/build_for_rerun``: what bioblend's ``rerun_job`` reads."""
    params = record.tool.params()
    inputs, outputs = tool_io(params)
    return {
        "id": record.tool.slug,
        "name": record.tool.name,
        "version": record.tool.tool_version,
        "description": record.tool.description or "",
        "history_id": record.history_id,
        "job_id": record.job_id,
        "job_remap": False,
        "state_inputs": state_inputs(params, record.params, record.files),
        "inputs": inputs,
        "outputs": outputs,
    }
