"""A TES task's backend parameters (``resources.backend_parameters``): where it runs and
what its destination's runner is asked beyond the destination's own settings.

The names (keys are case-insensitive, as the specification says):

- ``destination``: a configured destination's name; understood everywhere, and
  chosen before every routing rule (``Router.route_task``).
- ``slurm_partition``, ``slurm_qos``: sbatch's ``--partition`` (over the
  destination's ``partition``) and ``--qos``; understood on slurm destinations.
  Values are plain words (``[A-Za-z0-9._-]{1,128}``): anything else is refused
  (400 naming the field), as it would reach sbatch's command line.
- ``docker_network``: a Docker network the operator allowed (``tes.docker_networks``)
  that the executors join (``--network <name>``) instead of none; understood on docker
  destinations and destinations with ``container:``.

A parameter the chosen destination does not understand, or a network not allowed,
is *unsupported*: with ``backend_parameters_strict`` the create is refused (400
naming it); otherwise the task runs without it, a line in its system logs says so
(``tes_tasks.notes``) and the stored document leaves it out (the specification:
"Backends shall not store or return unsupported keys"). service-info lists the
names that at least one configured destination that can run TES tasks understands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobferry.config import Config, DestinationConfig
from jobferry.errors import ValidationError
from jobferry.services import tes_plan

DESTINATION = "destination"
SLURM_PARTITION = "slurm_partition"
SLURM_QOS = "slurm_qos"
DOCKER_NETWORK = "docker_network"
#: Every name this server knows, in the order service-info lists them.
KNOWN = (DESTINATION, SLURM_PARTITION, SLURM_QOS, DOCKER_NETWORK)
#: The ``runner_options`` key (``jobs.runner_options``) each Slurm parameter sets.
_SLURM_OPTION = {SLURM_PARTITION: "partition", SLURM_QOS: "qos"}
#: A Slurm partition's or qos's name: a plain word, safe on sbatch's command line.
_WORD = re.compile(r"[A-Za-z0-9._-]{1,128}")
_WHERE = "resources.backend_parameters"


@dataclass(frozen=True)
class Chosen:
    """What a task's backend parameters ask of its destination."""

    #: ``jobs.runner_options``: ``{"partition": ..., "qos": ...}`` (slurm), or None.
    runner_options: dict[str, str] | None = None
    #: The Docker network its executors join, or None (the destination's rule).
    network: str | None = None
    #: The names given that are ignored (sorted as given; empty when all apply).
    unsupported: list[str] = field(default_factory=list)


def _params(doc: Mapping[str, Any]) -> Mapping[str, str]:
    return (doc.get("resources") or {}).get("backend_parameters") or {}


def requested_destination(doc: Mapping[str, Any]) -> str | None:
    """The ``destination`` parameter's value (any case of the key), or None."""
    for key, value in _params(doc).items():
        if key.casefold() == DESTINATION and value:
            return str(value)
    return None


def understood(config: Config, dest: DestinationConfig) -> set[str]:
    """The names *dest* understands under *config*."""
    names = {DESTINATION}
    if dest.runner == "slurm":
        names |= set(_SLURM_OPTION)
    if config.tes.docker_networks and (dest.runner == "docker" or dest.container is not None):
        names.add(DOCKER_NETWORK)
    return names


def advertised(config: Config) -> list[str]:
    """service-info's ``tesResources_backend_parameters``: ``destination``, and the
    names some destination that can run TES tasks understands."""
    names = {DESTINATION}
    for name, dest in config.destinations.items():
        try:
            tes_plan.container_command(config, name, dest)
        except ValidationError:
            continue  # no TES task can go there: what it understands does not matter
        names |= understood(config, dest)
    return [name for name in KNOWN if name in names]


def choose(config: Config, dest: DestinationConfig, doc: Mapping[str, Any]) -> Chosen:
    """Read *doc*'s backend parameters for *dest*. Raises ValidationError naming the
    field for a malformed Slurm value, or for unsupported names when the task is
    ``backend_parameters_strict``."""
    known = understood(config, dest)
    options: dict[str, str] = {}
    network = None
    unsupported = []
    for key, value in _params(doc).items():
        name = key.casefold()
        if name not in known:
            unsupported.append(key)
        elif name in _SLURM_OPTION:
            if not _WORD.fullmatch(value):
                message = "must be a plain word (letters, digits, . _ -; at most 128)"
                raise ValidationError(
                    f"{_WHERE}.{key}: {message}", errors={f"{_WHERE}.{key}": [message]}
                )
            options[_SLURM_OPTION[name]] = value
        elif name == DOCKER_NETWORK:
            if value in config.tes.docker_networks:
                network = value
            else:
                unsupported.append(key)  # a network the operator did not allow
    unsupported.sort()
    if unsupported and (doc.get("resources") or {}).get("backend_parameters_strict"):
        message = "not supported here: " + ", ".join(unsupported)
        raise ValidationError(
            f"{_WHERE}: {message}",
            errors={f"{_WHERE}.{key}": ["Not supported here."] for key in unsupported},
        )
    return Chosen(options or None, network, unsupported)


def note(chosen: Chosen) -> list[str]:
    """The system log lines that say which parameters were ignored (none: no line)."""
    if not chosen.unsupported:
        return []
    return [f"backend parameters ignored (not supported): {', '.join(chosen.unsupported)}"]
