"""The steps of a submission that need no job service: the form's own fields, the
script version it runs (cached), and where its uploads go.

``JobService.submit`` (``services.jobs``) reads top to bottom as validate,
place, store, start or queue; the helpers it calls for the first and third
steps live here so that the service stays short. Nothing here touches the job
table: the insert (and the one transaction that makes the job exist) stays in
the service.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from jobferry.argspec.introspect import ScriptSpec
from jobferry.errors import FormError, ScriptNotFoundError, ValidationError
from jobferry.services.core import Core
from jobferry.services.routing import ResourceRequest
from jobferry.staging.forms import UploadedFile
from jobferry.staging.paths import safe_filename
from jobferry.store.models import Script, ScriptVersion

#: How long a resolved script version is reused by submissions, seconds.
VERSION_CACHE_S = 2.0
#: Parsed specs kept by ``ScriptVersions`` (versions, all scripts together).
SPEC_CACHE = 256


def check_form(job_name: str | None, iteration: str | None) -> tuple[str, int | None]:
    """The job's name (stripped) and the script iteration asked for, checked as
    Wooey's form checks them. Raises FormError."""
    name = (job_name or "").strip()
    if not name:
        raise FormError(errors={"job_name": ["This field is required."]})
    if len(name) > 255:
        raise FormError(errors={"job_name": ["Ensure this value has at most 255 characters."]})
    if iteration in (None, ""):
        return name, None
    try:
        number = int(str(iteration))
    except ValueError:
        raise FormError(errors={"iteration": ["Enter a whole number."]}) from None
    if not 0 <= number < 2**31:
        raise FormError(errors={"iteration": ["Enter a number below 2147483648."]})
    return name, number


@dataclass(frozen=True)
class SubmitRequest:
    """A job submission as a face received it."""

    slug: str
    job_name: str | None
    job_description: str | None = None
    command: str = ""
    version: str | None = None
    iteration: str | None = None
    history_id: str | None = None
    #: Optional destination and resources the client asked for.
    resources: ResourceRequest = ResourceRequest()
    #: The Galaxy tool id when submitted through ``POST /api/tools`` (routing rules).
    tool_id: str | None = None


@dataclass(frozen=True)
class ResolvedVersion:
    id: str
    path: str
    spec: ScriptSpec
    group: str | None = None


class ScriptVersions:
    """The script versions submissions run, cached for VERSION_CACHE_S.

    Registering a script through this process clears the cache at once (it bumps
    ``Core.scripts_generation``); a change made by another process (the CLI, another
    node on the same store) is seen within VERSION_CACHE_S.

    The parsed spec (``ScriptSpec``) of each version is kept apart, by the version's
    id and checksum, for as long as the process runs (at most ``SPEC_CACHE``
    versions). That is safe on any number of nodes: a version's row is written once
    (registering changed content makes a new version, with a new id and checksum;
    re-registering the same content reuses the row as it is), so a cached spec is
    never stale for the version it belongs to, only which version is the default
    can change, and that is re-read every VERSION_CACHE_S. The checksum in the key
    is the row's etag, should a row ever be rewritten in place. Re-resolving a
    version then costs one narrow query (no spec column, no JSON decode, no
    ``from_dict``), and it returns the same ``ScriptSpec`` object, so the argparse
    parser built from it (``argspec.command``) and the results of short commands
    (``CommandChecker``) are reused instead of rebuilt every VERSION_CACHE_S.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self._cache: dict[tuple[Any, ...], tuple[float, ResolvedVersion]] = {}
        self._specs: dict[tuple[str, str], ScriptSpec] = {}

    def resolve(self, slug: str, version: str | None, iteration: int | None) -> ResolvedVersion:
        """The version of *slug* a submission runs (the default one unless *version*
        or *iteration* name another). Raises ScriptNotFoundError, ValidationError."""
        found = self.cached(slug, version, iteration)
        if found is not None:
            return found
        key = (slug, version, iteration, self.core.scripts_generation)
        now = time.monotonic()
        resolved = self._choose(slug, version, iteration)
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[key] = (now, resolved)
        return resolved

    def cached(
        self, slug: str, version: str | None, iteration: int | None
    ) -> ResolvedVersion | None:
        """The version ``resolve`` would return, if it was resolved less than
        VERSION_CACHE_S ago (no store access: the event loop may call it); else None."""
        cached = self._cache.get((slug, version, iteration, self.core.scripts_generation))
        if cached is not None and time.monotonic() - cached[0] < VERSION_CACHE_S:
            return cached[1]
        return None

    def _choose(self, slug: str, version: str | None, iteration: int | None) -> ResolvedVersion:
        with self.core.sessions.begin() as session:
            stmt = (
                select(
                    ScriptVersion.id, ScriptVersion.path, ScriptVersion.checksum, Script.group_name
                )
                .join(Script, Script.id == ScriptVersion.script_id)
                .where(Script.slug == slug, Script.is_active, ScriptVersion.is_active)
            )
            if version is None and iteration is None:
                stmt = stmt.where(ScriptVersion.is_default)
            if version is not None:
                stmt = stmt.where(ScriptVersion.version == version)
            if iteration is not None:
                stmt = stmt.where(ScriptVersion.iteration == iteration)
            rows = session.execute(stmt.limit(2)).all()
            if not rows:
                raise ScriptNotFoundError(errors={"script": "Unable to find script."})
            if len(rows) > 1:
                raise ValidationError(
                    "more than one version matches; give both version and iteration",
                    errors={"version": ["More than one version matches; give iteration as well."]},
                )
            version_id, path, checksum, group = rows[0]
            spec = self._specs.get((version_id, checksum))
            if spec is None:
                data = session.execute(
                    select(ScriptVersion.spec).where(ScriptVersion.id == version_id)
                ).scalar_one()
                spec = ScriptSpec.from_dict(data)
                if len(self._specs) >= SPEC_CACHE:
                    self._specs.clear()
                self._specs[(version_id, checksum)] = spec
        return ResolvedVersion(version_id, path, spec, group)


@dataclass(frozen=True)
class PlannedUploads:
    """Where each upload of a submission will lie, under its job's ``inputs``.

    Every upload gets its final path before anything is stored: the command
    refers to those paths.
    """

    job_dir: Path
    #: Each upload with its path relative to ``inputs_dir``.
    placed: list[tuple[UploadedFile, str]] = field(default_factory=list)
    #: Form field -> the path of its first upload (what the command is built with).
    by_field: dict[str, str] = field(default_factory=dict)

    @property
    def inputs_dir(self) -> Path:
        return self.job_dir / "inputs"

    @classmethod
    def of(cls, job_dir: Path, uploads: Sequence[UploadedFile]) -> PlannedUploads:
        planned = cls(job_dir)
        for index, upload in enumerate(uploads):
            rel = f"{index}/{safe_filename(upload.filename)}"
            planned.placed.append((upload, rel))
            planned.by_field.setdefault(upload.field, str(planned.inputs_dir / rel))
        return planned

    def move_in(self) -> None:
        """Move every upload to its planned path (the job's directory exists)."""
        for upload, rel in self.placed:
            target = self.inputs_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(upload.path, target)

    def file_rows(self, param_of: dict[str, str]) -> list[dict[str, Any]]:
        """The ``job_files`` rows of the uploads; *param_of* maps a path to the
        script parameter it was given to."""
        return [
            {
                "kind": "input",
                "name": rel,
                "param": param_of.get(str(self.inputs_dir / rel)),
                "size": upload.size,
                "sha256": upload.sha256,
            }
            for upload, rel in self.placed
        ]
