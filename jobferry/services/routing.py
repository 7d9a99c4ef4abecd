"""Routing: which destination a job goes to, and whether it can ever run there.

A destination is a runner plus parameters (config ``destinations``). The
router applies ``routing.rules`` in order (a script slug, a Galaxy tool id, a
username or a script group each name a destination), else ``routing.default``.
A TES task (``route_task``) is matched by ``tes: true``, ``image`` (a glob over
its executors' images) and ``user`` rules only, else ``tes.destination``; a
script's or Galaxy job never matches a ``tes`` or ``image`` rule.
A submission may also ask for a destination by name and for resources (cores,
memory, GPUs, walltime) beyond the destination's defaults; ``check_fits``
refuses a job that no node or cluster of its runner could ever hold, so it is
rejected at once instead of waiting in the queue forever.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from jobferry.config import Config, DestinationConfig
from jobferry.errors import UnsatisfiableError, ValidationError
from jobferry.runners.base import Capacity


@dataclass(frozen=True)
class Resources:
    cores: int
    memory_mb: int | None
    gpus: int
    walltime_s: float | None


@dataclass(frozen=True)
class Placement:
    """Where a submission goes and what it asks for."""

    destination: str
    runner: str
    resources: Resources


@dataclass(frozen=True)
class ResourceRequest:
    """Optional per-job overrides a client gave at submission."""

    destination: str | None = None
    cores: int | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    walltime_s: float | None = None


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config

    @property
    def destinations(self) -> dict[str, DestinationConfig]:
        return self.config.destinations

    def route(
        self,
        *,
        slug: str,
        group: str | None,
        username: str,
        tool_id: str | None = None,
    ) -> str:
        """The destination a job of *slug* by *username* goes to (first rule wins)."""
        for rule in self.config.routing.rules:
            if rule.tes or rule.image is not None:
                continue  # TES tasks' rules (route_task)
            if (
                (rule.script is not None and rule.script == slug)
                or (rule.tool is not None and rule.tool == tool_id)
                or (rule.user is not None and rule.user == username)
                or (rule.group is not None and rule.group == group)
            ):
                return rule.destination
        return self.config.routing.default

    def route_task(self, images: Iterable[str], username: str) -> str:
        """The destination of a TES task whose executors use *images*, by *username*:
        the first ``tes: true`` rule, ``image`` rule (an fnmatch glob, matched against
        each executor's image: any one matching is enough) or ``user`` rule that
        matches, else ``tes.destination``, else ``routing.default``. A task's own
        ``destination`` backend parameter comes before this (``TesService.create``)."""
        wanted = list(images)
        for rule in self.config.routing.rules:
            if (
                rule.tes
                or (rule.user is not None and rule.user == username)
                or (
                    rule.image is not None
                    and any(fnmatch.fnmatchcase(image, rule.image) for image in wanted)
                )
            ):
                return rule.destination
        return self.config.tes.destination or self.config.routing.default

    def place(
        self,
        request: ResourceRequest,
        *,
        slug: str,
        group: str | None,
        username: str,
        tool_id: str | None = None,
    ) -> Placement:
        """Choose the destination and the job's resources. Raises ValidationError."""
        name = request.destination or self.route(
            slug=slug, group=group, username=username, tool_id=tool_id
        )
        dest = self.destinations.get(name)
        if dest is None:
            known = ", ".join(sorted(self.destinations))
            raise ValidationError(
                f"unknown destination {name!r} (known: {known})",
                errors={"destination": [f"Unknown destination {name!r}; known: {known}."]},
            )
        walltime = request.walltime_s
        if walltime is None:
            walltime = dest.walltime_s or float(self.config.jobs.default_walltime_s) or None
        resources = Resources(
            cores=request.cores if request.cores is not None else dest.cores,
            memory_mb=request.memory_mb if request.memory_mb is not None else dest.memory_mb,
            gpus=request.gpus if request.gpus is not None else dest.gpus,
            walltime_s=walltime or None,
        )
        return Placement(name, dest.runner, resources)


def check_fits(placement: Placement, capacity: Capacity | None) -> None:
    """Refuse a job its destination can never hold. Raises UnsatisfiableError."""
    if capacity is None:
        return
    r = placement.resources
    problems = []
    if capacity.cores is not None and r.cores > capacity.cores:
        problems.append(f"{r.cores} cores (at most {capacity.cores})")
    if capacity.memory_mb is not None and r.memory_mb and r.memory_mb > capacity.memory_mb:
        problems.append(f"{r.memory_mb} MB of memory (at most {capacity.memory_mb})")
    if capacity.gpus is not None and r.gpus > capacity.gpus:
        problems.append(f"{r.gpus} GPUs (at most {capacity.gpus})")
    if problems:
        message = (
            f"destination {placement.destination!r} can never run this job: it asks for "
            f"{', '.join(problems)} on {capacity.where}"
        )
        raise UnsatisfiableError(message, errors={"resources": [message]})


#: Submission fields (Wooey form fields; Galaxy's ``resources`` object) read here.
RESOURCE_FIELDS = ("destination", "cores", "memory_mb", "gpus", "walltime_s")


def parse_request(raw: Mapping[str, object]) -> ResourceRequest:
    """Read optional resource fields from a submission (strings from forms, or JSON).

    Raises ValidationError naming the field.
    """
    errors: dict[str, list[str]] = {}

    def number(key: str, *, minimum: float, integer: bool = True) -> float | None:
        value = raw.get(key)
        if value is None or value == "":
            return None
        try:
            if isinstance(value, bool):
                raise ValueError
            parsed = int(str(value)) if integer else float(str(value))
        except ValueError:
            errors[key] = ["Enter a whole number." if integer else "Enter a number."]
            return None
        if parsed < minimum or parsed > 2**31:
            errors[key] = [f"Ensure this value is between {minimum:g} and {2**31}."]
            return None
        return parsed

    destination = raw.get("destination")
    if destination is not None and not isinstance(destination, str):
        errors["destination"] = ["Enter a destination name."]
        destination = None
    cores = number("cores", minimum=1)
    memory = number("memory_mb", minimum=1)
    gpus = number("gpus", minimum=0)
    walltime = number("walltime_s", minimum=1, integer=False)
    if errors:
        raise ValidationError("invalid resource request", errors=errors)
    return ResourceRequest(
        destination=destination or None,
        cores=None if cores is None else int(cores),
        memory_mb=None if memory is None else int(memory),
        gpus=None if gpus is None else int(gpus),
        walltime_s=walltime,
    )
