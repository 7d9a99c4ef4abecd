"""Registered scripts as Galaxy tools: finding, running, searching, rerunning.

This is the Galaxy face's behaviour over scripts, so it lives in services:
which version a ``tool_version`` names, how a tool run becomes a submission,
and which earlier jobs ``POST /api/jobs/search`` counts as the same. Answers
are face-neutral records (``ToolRecord``, ``JobSummary``, ``JobDetail``,
``RerunRecord``) that ``jobferry.api.galaxy.tools_json`` and ``jobs_json``
shape as Galaxy's JSON.

``POST /api/tools`` turns Galaxy's ``inputs`` object into the same command
string a Wooey client would send (``tool_inputs.convert_inputs``) and submits
it through ``JobService.submit``, so validation is exactly the Wooey face's.
Datasets given as ``{"src": "hda", "id": ...}`` are the caller's earlier job
files: each is copied into a private temporary directory and handed over as an
upload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from jobferry.errors import NotFoundError, ValidationError
from jobferry.services.core import Core, Principal
from jobferry.services.galaxy import GalaxyService, file_record
from jobferry.services.jobs import JobService, SubmitRequest
from jobferry.services.records import JobDetail, JobSummary, RerunRecord, ToolRecord
from jobferry.services.routing import parse_request
from jobferry.services.tool_inputs import (
    bad_input,
    convert_inputs,
    payload_inputs,
    resources_of,
    text_field,
)
from jobferry.staging.forms import UploadedFile
from jobferry.staging.paths import safe_filename
from jobferry.store.models import Job, JobFile, Script, ScriptVersion

logger = logging.getLogger(__name__)

#: States ``POST /api/jobs/search`` matches when the request names none.
DEFAULT_SEARCH_STATES = ("new", "queued", "waiting", "running", "ok")


def _tool(script: Script, version: ScriptVersion) -> ToolRecord:
    return ToolRecord(
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


class GalaxyToolService:
    def __init__(self, core: Core, jobs: JobService, galaxy: GalaxyService) -> None:
        self.core = core
        self.jobs = jobs
        self.galaxy = galaxy

    # --- tools ------------------------------------------------------------------------

    def _tool_versions(self, slug: str | None = None) -> list[ToolRecord]:
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
            return [_tool(script, version) for script, version in session.execute(stmt).all()]

    def resolve(self, slug: str, version: str | None = None) -> ToolRecord:
        """The tool's default version, or the one named by a ``tool_version`` string."""
        rows = self._tool_versions(slug)
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

    def list_tools(self, *, q: str | None = None) -> list[ToolRecord]:
        """``GET /api/tools``: every active script's default version; with ``q``, those whose
        id, name or description contains it (case-insensitively)."""
        rows = [r for r in self._tool_versions() if r.is_default]
        if q is None:
            return rows
        needle = q.lower()
        return [
            r
            for r in rows
            if needle in r.slug.lower()
            or needle in r.name.lower()
            or needle in (r.description or "").lower()
        ]

    def show_tool(self, slug: str, *, version: str | None = None) -> tuple[ToolRecord, list[str]]:
        """``GET /api/tools/{id}``: the tool (its default or named version) and the version
        strings of all its active versions, oldest first."""
        row = self.resolve(slug, version)
        return row, [r.tool_version for r in self._tool_versions(slug)]

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

    def run_tool(self, principal: Principal, payload: Mapping[str, Any]) -> list[JobSummary]:
        """``POST /api/tools``: submit one job of the tool; its summary. The disk guard
        refuses it (507) before its datasets are staged."""
        self.jobs.disk.require("new submissions")
        slug = text_field(payload, "tool_id", required=True)
        assert slug is not None
        history_id = text_field(payload, "history_id")
        if history_id is not None and len(history_id) > 64:
            raise bad_input("history_id", "Ensure this value has at most 64 characters.")
        row = self.resolve(slug, text_field(payload, "tool_version"))
        spec = row.spec
        converted = convert_inputs(
            spec, payload_inputs(payload), self.jobs.checker.limits.max_tokens
        )
        uploads = self._stage(principal, converted.datasets)
        request = SubmitRequest(
            slug=row.slug,
            job_name=row.name[:255],
            command=converted.command,
            version=row.version,
            iteration=str(row.iteration),
            history_id=history_id,
            resources=parse_request(resources_of(payload)),
            tool_id=slug,
        )
        try:
            job_id = self.jobs.submit(principal, request, uploads)
        finally:
            if uploads:
                shutil.rmtree(uploads[0].path.parent, ignore_errors=True)
        return self.galaxy.summaries(principal, [job_id])

    def build_for_rerun(self, principal: Principal, job_id: str) -> RerunRecord:
        """``GET /api/jobs/{id}/build_for_rerun``: the job with its tool, to run again."""
        view = self.galaxy.visible_job(principal, job_id)
        job = view.job
        with self.core.sessions.begin() as session:
            found = session.execute(
                select(Script, ScriptVersion)
                .join(ScriptVersion, ScriptVersion.script_id == Script.id)
                .where(ScriptVersion.id == job.script_version_id)
            ).first()
            if found is None:
                raise NotFoundError("The tool of this job no longer exists.")
            tool = _tool(*found)
        return RerunRecord(
            tool=tool,
            job_id=job.id,
            history_id=job.history_id,
            params=dict(job.params or {}),
            files=[file_record(f) for f in view.files],
        )

    # --- search -----------------------------------------------------------------------

    def search_jobs(self, principal: Principal, payload: Mapping[str, Any]) -> list[JobDetail]:
        """``POST /api/jobs/search``: the caller's jobs of the same tool version with the
        same parameters and inputs of the same content (sha256)."""
        slug = text_field(payload, "tool_id", required=True)
        assert slug is not None
        if "inputs" not in payload:
            raise bad_input("inputs", "This field is required.")
        row = self.resolve(slug, text_field(payload, "tool_version"))
        state = text_field(payload, "state")
        states = [state] if state else list(DEFAULT_SEARCH_STATES)
        spec = row.spec
        try:
            converted = convert_inputs(
                spec, payload_inputs(payload), self.jobs.checker.limits.max_tokens
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
            inputs = _input_digests(session, same_params)
        matching = [i for i in same_params if Counter(inputs[i]) == want_inputs]
        return [self.galaxy.show_job(principal, job_id) for job_id in matching]


def _input_digests(session: Session, job_ids: Sequence[str]) -> dict[str, list[tuple[Any, str]]]:
    """(param, sha256) of every input file of the given jobs."""
    found: dict[str, list[tuple[Any, str]]] = {i: [] for i in job_ids}
    for start in range(0, len(job_ids), 500):
        chunk = list(job_ids[start : start + 500])
        rows = session.execute(
            select(JobFile.job_id, JobFile.param, JobFile.sha256).where(
                and_(JobFile.job_id.in_(chunk), JobFile.kind == "input")
            )
        ).all()
        for job_id, param, digest in rows:
            found[job_id].append((param, digest))
    return found
