"""The ``routing:`` section: which destination a job (or a TES task) goes to.

Part of the one schema (``jobferry.config``); the rules are applied by
``services.routing.Router``. A rule names exactly one thing to match, so its
meaning never depends on how two matches combine.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from jobferry.config.base import _Section

#: The keys a rule matches on: exactly one of them is given per rule.
MATCH_KEYS = ("script", "tool", "user", "group", "tes", "image")


class RoutingRule(_Section):
    """Send matching jobs to a destination; the first matching rule wins."""

    destination: str
    script: str | None = Field(None, description="A Wooey script's slug.")
    tool: str | None = Field(None, description="A Galaxy tool id.")
    user: str | None = Field(
        None, description="A username: their jobs of every face, TES tasks included."
    )
    group: str | None = Field(None, description="A script group.")
    tes: bool | None = Field(
        None,
        description="true: every TES task (only true is allowed). Scripts and Galaxy "
        "jobs never match it.",
    )
    image: str | None = Field(
        None,
        description="An fnmatch glob (e.g. 'quay.io/biocontainers/*'): a TES task any of "
        "whose executors' images it matches. Scripts and Galaxy jobs never match it.",
    )

    @model_validator(mode="after")
    def _one_match(self) -> RoutingRule:
        given = [k for k in MATCH_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a rule names exactly one of " + ", ".join(MATCH_KEYS))
        if self.tes is False:
            raise ValueError("tes: only true is meaningful (leave the rule out instead)")
        if self.image == "":
            raise ValueError("image: a non-empty glob")
        return self


class RoutingConfig(_Section):
    """Which destination a job goes to."""

    default: str = Field(
        "local",
        description="Destination of a job no rule matches (a TES task's: tes.destination first).",
    )
    rules: list[RoutingRule] = Field(
        default_factory=list,
        description="First match wins; each names one of script/tool/user/group/tes/image "
        "and a destination. A TES task is matched by tes, image and user rules only; "
        "its backend parameter destination comes before every rule.",
    )
