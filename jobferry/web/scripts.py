"""Scripts: the catalogue (by group, with search) and each script's generated form.

``/ui/scripts?q=...`` lists the active scripts by group, filtered on the server.
``/ui/scripts/<slug>`` shows a script's description and a form generated from
the parameters of one of its versions (``?version=<id>``; the default one
otherwise), built by ``services.script_forms``. ``?rerun=<job id>`` fills that
form with an earlier job's parameters and offers its input files for re-use.

Posting the form submits a job exactly as the Wooey API does: the body is
streamed (``staging.streamed_body.StreamedBody``) through
``staging.forms.FormReceiver`` (only a signed-in user's body is read: the session
is checked before a byte of it), the values become the job's
``command`` (``script_forms.build_command``) and ``JobService.submit`` validates
and stores it. Errors go back next to the field they concern; success sends the
browser to the job's page.

The form's CSRF token travels in its (streamed) body, so it is checked once the
body is in and before anything is done with it. No cross-site body is read: the
session cookie is ``SameSite=Strict``, so a cross-site post comes without a
session and is refused in ``prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tornado.web

from jobferry import errors
from jobferry.services import script_forms
from jobferry.services.jobs import SubmitRequest
from jobferry.services.script_forms import KeptFile
from jobferry.staging.forms import FormReceiver, UploadedFile
from jobferry.staging.streamed_body import StreamedBody
from jobferry.web.base import UI, WebHandler, signed_in

SLUG = r"[A-Za-z0-9_-]{1,200}"


def search_scripts(scripts: list[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """The active scripts whose name, group, slug or description hold every word of *query*."""
    words = query.lower().split()
    found = []
    for script in scripts:
        if not script["is_active"] or script["default_version"] is None:
            continue
        text = " ".join(
            str(script.get(k) or "") for k in ("script_name", "group", "slug", "script_description")
        ).lower()
        if all(word in text for word in words):
            found.append(script)
    return found


@dataclass(frozen=True)
class FilledForm:
    """A script's form as it is shown filled in: defaults, a rerun's, or a refused post's."""

    values: dict[str, list[str]]
    job_name: str
    job_description: str = ""
    rerun: str = ""
    kept: dict[str, list[KeptFile]] = field(default_factory=dict)
    #: The kept files ticked (None: all of them).
    keep_checked: set[str] | None = None


class ScriptsHandler(WebHandler):
    """``/ui/scripts``: the catalogue."""

    @signed_in
    async def get(self) -> None:
        query = self.get_query_argument("q", "").strip()[:200]
        scripts = search_scripts(await self.call(self.services.scripts.list_scripts), query)
        groups: dict[str, list[dict[str, Any]]] = {}
        for script in scripts:
            groups.setdefault(script["group"], []).append(script)
        self.render_page(
            "scripts.html",
            title="Scripts",
            nav="scripts",
            css=("scripts.css",),
            query=query,
            groups=sorted(groups.items()),
            count=len(scripts),
        )


@tornado.web.stream_request_body
class ScriptHandler(StreamedBody, WebHandler):
    """``/ui/scripts/<slug>``: the form (GET) and its submission (POST, streamed)."""

    receiver: FormReceiver | None = None
    _xsrf_deferred = False

    # --- the streamed body (only a signed-in user's is read) --------------------------

    async def prepare(self) -> None:
        self._xsrf_deferred = self.request.method == "POST"
        await super().prepare()  # the session; the CSRF token is in the body: checked in post
        if self.request.method != "POST":
            return
        if self.principal is None:
            raise errors.AuthenticationError("Please sign in.")
        self.services.disk.require("uploads")
        cap = self.core.config.server.max_upload_mb * 1024 * 1024
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            raise errors.PayloadTooLargeError(
                f"the form ({length} bytes) exceeds server.max_upload_mb"
            )
        self.request.connection.set_max_body_size(cap)  # type: ignore[union-attr]
        self.receiver = FormReceiver(
            self.request.headers.get("Content-Type", ""),
            self.core.tmp_path,
            max_body_bytes=cap,
            max_field_bytes=self.core.config.server.max_form_kb * 1024,
        )

    def check_xsrf_cookie(self) -> None:
        if not self._xsrf_deferred:
            super().check_xsrf_cookie()

    def drop_upload(self) -> None:
        if self.receiver is not None:
            self.receiver.discard()
            self.receiver = None

    # --- the page -------------------------------------------------------------------

    async def script_and_version(
        self, slug: str, version_id: str | None, *, strict: bool = True
    ) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """The script, the chosen version's record and its resolved spec (default version
        unless *version_id* names another; one that is not there, or no longer active,
        is a 404 when *strict*, else the default is used)."""
        script = await self.call(self.services.scripts.get_script, slug)
        if not script["is_active"]:
            raise errors.NotFoundError("Unable to find script.")
        versions = [v for v in script["versions"] if v["is_active"]]
        chosen = next((v for v in versions if v["id"] == version_id), None)
        if chosen is None and version_id and strict:
            raise errors.NotFoundError("That version of the script is not available.")
        if chosen is None:
            chosen = next((v for v in versions if v["default_version"]), None)
        if chosen is None:
            raise errors.NotFoundError("This script has no version to run.")
        resolved = await self.call(
            self.services.jobs.versions.resolve,
            slug,
            chosen["script_version"],
            chosen["script_iteration"],
        )
        return script, chosen, resolved

    async def show(
        self,
        script: dict[str, Any],
        chosen: dict[str, Any],
        spec: Any,
        form: FilledForm,
        *,
        field_errors: dict[str, list[str]] | None = None,
        status: int = 200,
    ) -> None:
        kept = form.kept
        self.set_status(status)
        self.render_page(
            "script.html",
            title=script["script_name"],
            nav="scripts",
            css=("scripts.css",),
            scripts=("scripts.js",),
            info=script,
            chosen=chosen,
            versions=[v for v in script["versions"] if v["is_active"]],
            description=spec.description or script["script_description"] or "",
            groups=script_forms.form_fields(spec),
            values=form.values,
            job_name=form.job_name,
            job_description=form.job_description,
            rerun=form.rerun,
            kept=kept,
            keep_checked=form.keep_checked
            if form.keep_checked is not None
            else {f.id for files in kept.values() for f in files},
            field_errors=field_errors or {},
        )

    @signed_in
    async def get(self, slug: str) -> None:
        assert self.principal is not None
        rerun = self.get_query_argument("rerun", "").strip()
        version_id = self.get_query_argument("version", None)
        strict = True
        if rerun and version_id is None:  # the version the job ran, if still there
            view = await self.call(self.services.jobs.get, self.principal, rerun)
            version_id, strict = view.job.script_version_id, False
        script, chosen, resolved = await self.script_and_version(slug, version_id, strict=strict)
        spec = resolved.spec
        groups = script_forms.form_fields(spec)
        values = {f.name: list(f.defaults) for g in groups for f in g.fields if f.defaults}
        job_name, description, kept = script["script_name"], "", {}
        if rerun:
            view = await self.call(self.services.jobs.get, self.principal, rerun)
            if view.script_slug != slug:
                raise errors.NotFoundError(f"job {rerun} did not run this script")
            values = script_forms.prefill(spec, view.job.params or {})
            job_name, description = view.job.name, view.job.description or ""
            kept = script_forms.kept_files(spec, view) if not view.files_expired else {}
        await self.show(
            script, chosen, spec, FilledForm(values, job_name, description, rerun, kept)
        )

    @signed_in
    async def post(self, slug: str) -> None:
        assert self.principal is not None
        form = self.receiver
        if self._finished or form is None:
            return
        form.finish()
        token = form.field("_xsrf")
        self.request.arguments["_xsrf"] = [token.encode()] if token else []
        self._xsrf_deferred = False
        self.check_xsrf_cookie()
        script, chosen, resolved = await self.script_and_version(slug, form.field("version_id"))
        spec = resolved.spec
        values = {k: v for k, v in form.fields.items() if k.startswith("p")}
        rerun = (form.field("rerun") or "").strip()
        job_name = form.field("job_name") or ""
        description = form.field("job_description") or ""
        file_fields = {
            script_forms.field_name(i) for i, p in enumerate(spec.params) if p.is_input_file
        }
        uploads, counts = script_forms.name_uploads(
            [u for u in form.files if u.field in file_fields]
        )
        chose_files = bool(uploads)
        kept: dict[str, list[KeptFile]] = {}
        keep_checked: set[str] = set()
        try:
            if rerun:
                view = await self.call(self.services.jobs.get, self.principal, rerun)
                kept = script_forms.kept_files(spec, view)
                keep = {
                    name: [i for i in form.fields.get(f"keep-{name}", []) if i]
                    for name in file_fields
                    if not counts.get(name)
                }
                keep = {k: v for k, v in keep.items() if v}
                keep_checked = {i for ids in keep.values() for i in ids}
                uploads += await self.reuse(rerun, keep, form)
                counts.update({name: len(ids) for name, ids in keep.items()})
            command = script_forms.build_command(spec, values, counts)
            request = SubmitRequest(
                slug=slug,
                job_name=job_name,
                job_description=description or None,
                command=command,
                version=chosen["script_version"],
                iteration=str(chosen["script_iteration"]),
            )
            job_id = await self.call(self.services.jobs.submit, self.principal, request, uploads)
        except errors.ValidationError as exc:
            problems = script_forms.field_errors(spec, exc.errors)
            if chose_files:
                problems.setdefault("__all__", []).append(
                    "Files are not kept when a form is refused: choose them again."
                )
            filled = FilledForm(values, job_name, description, rerun, kept, keep_checked)
            await self.show(script, chosen, spec, filled, field_errors=problems, status=400)
            return
        self.core.telemetry.submitted("web")
        self.redirect(f"{UI}/jobs/{job_id}", status=303)

    async def reuse(
        self, job_id: str, keep: dict[str, list[str]], form: FormReceiver
    ) -> list[UploadedFile]:
        """Copies of the earlier job's kept input files, into this form's upload directory."""
        if not keep:
            return []
        assert self.principal is not None
        reused: list[UploadedFile] = await self.call(
            script_forms.reuse_inputs,
            self.services.jobs,
            self.principal,
            job_id,
            keep,
            form.directory,
        )
        return reused


def script_routes(s: dict[str, Any]) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (rf"{UI}/scripts/?", ScriptsHandler, s),
        (rf"{UI}/scripts/({SLUG})", ScriptHandler, s),
    ]
