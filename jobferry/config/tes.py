"""The ``tes:`` section: the GA4GH TES face (``services.tes``, ``api/tes``).

Part of the one schema (``jobferry.config``); the same strict rules apply. The face
is off unless ``enabled``: a TES task runs whatever image and command its user
names, which the other faces never allow (they run scripts an admin registered).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from jobferry.config.base import _Section

#: ``uid:gid``, both numeric (a name would be resolved inside the image).
_UID_GID = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")
#: A Docker network's name (``docker network create``'s rule; never ``a:b`` forms).
_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: ``host`` or ``host:port`` (no scheme, no path).
_HOST = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,255}")


class ContainerConfig(_Section):
    """A destination's container engine on its execution host (a destination's
    ``container:``): what lets a Slurm destination run TES tasks, whose executors are
    containers the task program starts there, one per executor."""

    runtime: Literal["docker", "podman"] = Field(
        description="The engine's CLI the task program runs executors with (``run``, "
        "``rm -f``; both take the same options)."
    )
    command: list[str] | None = Field(
        None,
        description="Its command line on the execution host (e.g. [/usr/local/bin/docker] "
        "or [docker, -H, unix:///run/docker.sock]); default: [runtime].",
    )

    @field_validator("command")
    @classmethod
    def _command(cls, command: list[str] | None) -> list[str] | None:
        if command is not None and (not command or not all(command)):
            raise ValueError("a non-empty list of non-empty strings")
        return command

    def argv(self) -> list[str]:
        return list(self.command) if self.command else [self.runtime]


class TesConfig(_Section):
    """The GA4GH Task Execution Service face (``/ga4gh/tes/v1``)."""

    enabled: bool = Field(
        False,
        description="Serve TES tasks (service-info answers either way). Any user may then "
        "run any image and command on the TES destination.",
    )
    destination: str | None = Field(
        None,
        description="Destination of TES tasks no routing rule (tes, image, user) sends "
        "elsewhere (a docker destination, a slurm or local one with a container:, or a "
        "local one with container_command); default: routing.default. A task's backend "
        "parameter destination comes first, then the rules, then this.",
    )
    file_roots: list[str] = Field(
        default_factory=list,
        description="Absolute directories file:// inputs and outputs may name (nothing else; "
        "never the data directory).",
    )
    http_hosts: list[str] = Field(
        default_factory=list,
        description="host or host:port that http(s):// inputs and outputs may name.",
    )
    container_command: list[str] | None = Field(
        None,
        description="The container engine's command line (e.g. [podman]); default: [docker] "
        "for a docker destination (with its runner's base_url); a local destination needs it.",
    )
    docker_networks: list[str] = Field(
        default_factory=list,
        description="Docker networks a task may name in its backend parameter "
        "docker_network (on docker destinations and those with container:); its "
        "executors then join that network instead of none.",
    )
    max_content_kb: Annotated[int, Field(ge=1)] = Field(
        1024, description="Largest inline input content of a task, KiB."
    )
    user: str | None = Field(
        None,
        description="uid:gid executors run as; default: runners.docker.user, else the "
        "daemon's own if not root, else 65534:65534 (nobody).",
    )

    @field_validator("file_roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        for root in roots:
            if not root.startswith("/"):
                raise ValueError(f"{root!r} is not an absolute directory")
        return roots

    @field_validator("http_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not _HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not host or host:port")
        return hosts

    @field_validator("docker_networks")
    @classmethod
    def _networks(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _NETWORK.fullmatch(name):
                raise ValueError(f"{name!r} is not a network name (letters, digits, _ . -)")
        return names

    @field_validator("container_command")
    @classmethod
    def _command(cls, command: list[str] | None) -> list[str] | None:
        if command is not None and (not command or not all(command)):
            raise ValueError("a non-empty list of non-empty strings")
        return command

    @field_validator("user")
    @classmethod
    def _uid_gid(cls, user: str | None) -> str | None:
        if user is not None and not _UID_GID.fullmatch(user):
            raise ValueError(f"{user!r} is not numeric uid:gid")
        return user
