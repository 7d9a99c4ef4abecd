"""The job list (``/ui/jobs``), its live refresh (``/ui/jobs/rows``) and Cancel.

Over ``JobPageService`` (keyset pages of the jobs the caller may see) and
``JobService.cancel``. The list is a plain page (filters are a GET form, paging
is links); ``static/jobs.js`` refreshes the rows of unfinished jobs, at most once
a second, from ``/ui/jobs/rows``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from jobferry import errors
from jobferry.services.core import Principal
from jobferry.services.job_pages import JobPage, ListFilter, parse_filter
from jobferry.services.states import TERMINAL_VALUES
from jobferry.web.base import UI, WebHandler, signed_in

#: The states a person can filter on, as the page names them (internal value, label).
STATE_CHOICES = (
    ("queued", "queued"),
    ("new", "submitted"),
    ("running", "running"),
    ("ok", "completed"),
    ("error", "failed"),
    ("deleting", "cancelling"),
    ("deleted", "REVOKED"),
)


def state_label(state: str, exit_code: int | None, reason: str | None) -> str:
    """A state as people read it (Wooey's names: completed, FAILURE, REVOKED, ...)."""
    if state == "ok":
        return "completed"
    if state == "error":
        ran = exit_code not in (None, 0) and (reason or "").startswith("exit code")
        return "FAILURE" if ran else "error"
    if state == "deleted":
        return "REVOKED"
    if state == "deleting":
        return "cancelling"
    if state == "new":
        return "submitted"
    return state


def state_badge(state: str) -> str:
    """The badge class of a state (site.css: ok, error, warn, info)."""
    return {"ok": "ok", "error": "error", "deleted": "warn", "deleting": "warn"}.get(state, "info")


def rerun_url(slug: str | None, job_id: str) -> str | None:
    """The prefilled form of the job's script (the scripts area's URL pattern)."""
    if not slug:
        return None
    return f"{UI}/scripts/{slug}?" + urlencode({"rerun": job_id})


class JobsHandler(WebHandler):
    """``GET /ui/jobs``: my jobs (an admin: everyone's), filtered, newest first, paged.

    The session is resolved in the same worker call as the page (``_load``), not in
    ``prepare``: one hop to the worker pool per page. A visitor without a live
    session is sent to sign in, as ``@signed_in`` does.
    """

    resolve_session = False

    async def get(self) -> None:
        token = self.session_token()
        raw = {
            "state": self.get_query_argument("state", ""),
            "script": self.get_query_argument("script", ""),
            "destination": self.get_query_argument("destination", ""),
            "from": self.get_query_argument("from", ""),
            "until": self.get_query_argument("until", ""),
            "user": self.get_query_argument("user", ""),
        }
        older = self.get_query_argument("older", None)
        newer = self.get_query_argument("newer", None)
        loaded = None
        if token is not None:
            try:
                loaded = await self.call(self._load, token, raw, older, newer)
            except errors.AuthenticationError:
                self.end_session()
        if loaded is None:
            self.redirect(self.sign_in_url())
            return
        principal, page, field_errors = loaded
        self.principal = self.current_user = principal
        if not principal.is_admin:
            raw["user"] = ""
        kept = {k: v for k, v in raw.items() if v and k not in field_errors}
        self.set_status(400 if field_errors else 200)
        self.render_page(
            "jobs.html",
            title="Jobs",
            nav="jobs",
            css=("jobs.css",),
            scripts=("jobs.js",),
            page=page,
            raw=raw,
            field_errors=field_errors,
            states=STATE_CHOICES,
            page_url=lambda **cursor: f"{UI}/jobs?" + urlencode({**kept, **cursor}),
            label=state_label,
            badge=state_badge,
            terminal=TERMINAL_VALUES,
        )

    def _load(
        self, token: str, raw: dict[str, str], older: str | None, newer: str | None
    ) -> tuple[Principal, JobPage, dict[str, str]]:
        """In a worker: who is signed in, and their page (field errors by field)."""
        principal = self.services.web_sessions.resolve(token)
        pages = self.services.job_pages
        field_errors: dict[str, str] = {}
        try:
            query = parse_filter(
                [raw["state"]],
                raw["script"],
                raw["destination"],
                raw["from"],
                raw["until"],
                raw["user"] if principal.is_admin else "",
            )
        except errors.ValidationError as exc:
            field_errors = {k: " ".join(v) for k, v in exc.errors.items()}
            query = ListFilter()
        try:
            page = pages.list_page(principal, query, older=older, newer=newer)
        except errors.ValidationError:
            field_errors["cursor"] = "This page link is damaged: showing the newest jobs."
            page = pages.list_page(principal, query)
        return principal, page, field_errors


class JobRowsHandler(WebHandler):
    """``GET /ui/jobs/rows?id=..``: the states of these jobs, as JSON (the list's refresh)."""

    @signed_in
    async def get(self) -> None:
        assert self.principal is not None
        ids = [i for i in self.get_query_arguments("id") if i and len(i) <= 64]
        rows = await self.call(self.services.job_pages.rows, self.principal, ids)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(
            {
                "jobs": [
                    {
                        "id": r.id,
                        "state": r.state,
                        "label": state_label(r.state, r.exit_code, r.state_reason),
                        "badge": state_badge(r.state),
                        "exit_code": r.exit_code,
                        "terminal": r.is_terminal,
                    }
                    for r in rows
                ]
            }
        )


class CancelHandler(WebHandler):
    """``POST /ui/jobs/<id>/cancel`` (CSRF-checked): cancel, then back to the job page."""

    @signed_in
    async def post(self, job_id: str) -> None:
        try:
            await self.call(self.services.jobs.cancel, self.principal, job_id)
        except errors.ConflictError:
            pass  # it ended meanwhile: the job page says how
        self.redirect(f"{UI}/jobs/{job_id}", status=303)
