"""``/api/jobs``: list, show, inputs/outputs, rerun template, search, cancel, metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import tornado.web

from jobferry import errors
from jobferry.api.galaxy.common import GalaxyResource, route
from jobferry.api.galaxy.jobs_json import (
    associations,
    common_problems,
    destination_params,
    job_element,
    job_metrics,
    job_summary,
)
from jobferry.api.galaxy.tools_json import rerun
from jobferry.services.galaxy import JOB_VIEWS, JobQuery, check_id
from jobferry.services.states import GALAXY_JOB_STATES

#: Filters on things this daemon has none of: given any value, the list is empty.
NOTHING_FILTERS = (
    "workflow_id",
    "invocation_id",
    "implicit_collection_jobs_id",
    "tool_request_id",
)
ORDER_BY = frozenset({"update_time", "create_time"})


def parse_query_datetime(text: str, name: str) -> datetime:
    """``YYYY-MM-DD`` (that day's 00:00) or an ISO datetime, as aware UTC. Raises
    ValidationError. A datetime without zone is UTC; one with a zone is converted."""
    value = text.strip()
    try:
        if len(value) == 10:
            parsed = datetime.strptime(value, "%Y-%m-%d")
        else:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise errors.ValidationError(
            f"{name}: expected a date (YYYY-MM-DD) or an ISO 8601 datetime",
            errors={name: ["Enter a date (YYYY-MM-DD) or an ISO 8601 datetime."]},
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


class JobListHandler(GalaxyResource):
    """``GET /api/jobs``."""

    async def get(self) -> None:
        principal = await self.authenticate()
        query = self.parse_query()
        jobs = await self.call(self.services.galaxy.list_jobs, principal, query)
        admin_view = query.view == "admin_job_list"
        self.send_json([job_summary(j, admin_view=admin_view) for j in jobs])

    def parse_query(self) -> JobQuery:
        states = self.list_arg("state")
        unknown = sorted(set(states) - GALAXY_JOB_STATES)
        if unknown:
            raise errors.ValidationError(
                f"unknown job state(s): {', '.join(unknown)[:200]}",
                errors={"state": [f"Unknown job state {s[:40]!r}." for s in unknown[:10]]},
            )
        view = self.arg("view") or "collection"
        if view not in JOB_VIEWS:
            raise errors.ValidationError(
                f"unknown view {view[:40]!r}", errors={"view": [f"Unknown view {view[:40]!r}."]}
            )
        order_by = self.arg("order_by") or "update_time"
        if order_by not in ORDER_BY:
            raise errors.ValidationError(
                "order_by: expected update_time or create_time",
                errors={"order_by": ["Enter update_time or create_time."]},
            )
        user_id = self.arg("user_id") or None
        if user_id is not None:
            check_id(user_id, "user")
        date_min = self.arg("date_range_min")
        date_max = self.arg("date_range_max")
        like = self.list_arg("tool_id_like")
        search = (self.arg("search") or "").strip()
        if search:  # Galaxy's free-text search, here on the tool id only
            like.append(f"%{search}%")
        return JobQuery(
            states=tuple(states),
            tool_ids=tuple(self.list_arg("tool_id")),
            tool_id_like=tuple(like),
            history_id=self.arg("history_id") or None,
            date_min=parse_query_datetime(date_min, "date_range_min") if date_min else None,
            date_max=parse_query_datetime(date_max, "date_range_max") if date_max else None,
            user_id=user_id,
            user_details=self.flag("user_details"),
            view=view,
            order_by=order_by,
            limit=self.int_arg("limit", 500, minimum=1),
            offset=self.int_arg("offset", 0),
            matches_nothing=any(self.arg(name) for name in NOTHING_FILTERS),
        )


class JobHandler(GalaxyResource):
    """``GET /api/jobs/{id}`` (``?full=``) and ``DELETE /api/jobs/{id}`` (cancel)."""

    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        full = self.flag("full")
        detail = await self.call(self.services.galaxy.show_job, principal, job_id, full=full)
        self.send_json(job_element(detail))

    async def delete(self, job_id: str) -> None:
        principal = await self.authenticate()
        self.payload()  # optional {"message": ...}: read (and size-checked), not used
        self.send_json(await self.call(self.services.galaxy.cancel, principal, job_id))


class JobInputsHandler(GalaxyResource):
    kind = "input"

    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        files = await self.call(self.services.galaxy.job_files, principal, job_id)
        self.send_json(associations(files, self.kind))


class JobOutputsHandler(JobInputsHandler):
    kind = "output"


class JobRerunHandler(GalaxyResource):
    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        record = await self.call(self.services.galaxy_tools.build_for_rerun, principal, job_id)
        self.send_json(rerun(record))


class JobMetricsHandler(GalaxyResource):
    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        metrics = await self.call(self.services.galaxy.metrics, principal, job_id)
        self.send_json(job_metrics(metrics))


class JobProblemsHandler(GalaxyResource):
    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        files = await self.call(self.services.galaxy.job_files, principal, job_id)
        self.send_json(common_problems(files))


class JobDestinationHandler(GalaxyResource):
    async def get(self, job_id: str) -> None:
        principal = await self.authenticate()
        placement = await self.call(self.services.galaxy.placement, principal, job_id)
        self.send_json(destination_params(placement))


class JobSearchHandler(GalaxyResource):
    """``POST /api/jobs/search``: answers 200 (bioblend refuses a 201)."""

    async def post(self) -> None:
        principal = await self.authenticate()
        payload = self.payload()
        found = await self.call(self.services.galaxy_tools.search_jobs, principal, payload)
        self.send_json([job_element(detail) for detail in found])


class NotImplementedHandler(GalaxyResource):
    """Galaxy job routes this daemon has no equivalent for: 501 / 501001."""

    async def _refuse(self, *args: str) -> None:
        await self.authenticate()
        raise tornado.web.HTTPError(501, "Method is not implemented.")

    get = put = post = _refuse


def job_routes(init: dict[str, Any]) -> list[Any]:
    job = r"/api/jobs/([^/]+)"
    return [
        (route(r"/api/jobs"), JobListHandler, init),
        (route(r"/api/jobs/search"), JobSearchHandler, init),
        (route(r"/api/job_lock"), NotImplementedHandler, init),
        (route(job), JobHandler, init),
        (route(job + "/inputs"), JobInputsHandler, init),
        (route(job + "/outputs"), JobOutputsHandler, init),
        (route(job + "/build_for_rerun"), JobRerunHandler, init),
        (route(job + "/metrics"), JobMetricsHandler, init),
        (route(job + "/common_problems"), JobProblemsHandler, init),
        (route(job + "/destination_params"), JobDestinationHandler, init),
        (route(job + "/(?:resume|error)"), NotImplementedHandler, init),
    ]
