"""The job-state vocabulary: the one internal state machine and each face's names for it.

The store keeps Galaxy's vocabulary (``new queued running ok error deleting
deleted``); the Wooey face reports ``submitted queued running completed FAILURE
error REVOKED`` (``jobferry.api.wooey.serialize.wooey_status``). People copy whichever name
they saw, so input (``jobferry job list --state``) accepts every face's names,
case-insensitively: all of them lower-case to distinct meanings. The README's
"Job states" table is this mapping.

It lives in services, not in a face, because services filter on these names
(Galaxy's job listing and search) and the CLI reads them too. ``JobState`` is
re-exported from the store so that faces (``api/``) never import the store.
"""

from __future__ import annotations

from jobferry.errors import ValidationError
from jobferry.store.models import ACTIVE_STATES, TERMINAL_STATES, JobState

__all__ = [
    "ACTIVE_STATES",
    "FINISHED_STATES",
    "GALAXY_JOB_STATES",
    "TERMINAL_STATES",
    "TERMINAL_VALUES",
    "WOOEY_NAMES",
    "JobState",
    "parse_state",
]

#: The final states as stored (strings), for comparing with records' ``state``.
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATES)

#: Galaxy's whole job-state vocabulary (a filter on a state this daemon never uses matches
#: nothing; anything else is a client error).
GALAXY_JOB_STATES = frozenset(
    {
        "new",
        "resubmitted",
        "upload",
        "waiting",
        "queued",
        "running",
        "finishing",
        "ok",
        "error",
        "failed",
        "paused",
        "deleting",
        "deleted",
        "deleted_new",
        "stop",
        "stopped",
        "skipped",
    }
)
#: Galaxy's ``finished_states``: cancelling a job in one of these changes nothing.
FINISHED_STATES = frozenset({"ok", "error", "deleted", "deleting"})

#: Wooey's status strings → the internal state they report. ``FAILURE`` (the script
#: ran and exited non-zero) and ``error`` (it could not run) are both ``error``;
#: ``running`` also covers a job being cancelled (``deleting``) on the Wooey face.
WOOEY_NAMES: dict[str, JobState] = {
    "submitted": JobState.NEW,
    "queued": JobState.QUEUED,
    "running": JobState.RUNNING,
    "completed": JobState.OK,
    "failure": JobState.ERROR,
    "error": JobState.ERROR,
    "revoked": JobState.DELETED,
}


def parse_state(name: str) -> str:
    """The internal state (as stored) that *name*, in any face's vocabulary, selects.

    A Galaxy state this daemon never enters (``waiting``, ``paused``, ...) is
    accepted as itself and matches no job, as on the Galaxy face; anything else is
    a ValidationError listing the accepted names.
    """
    key = name.strip().lower()
    internal = {s.value for s in JobState}
    if key in internal:
        return key
    if key in WOOEY_NAMES:
        return WOOEY_NAMES[key].value
    if key in GALAXY_JOB_STATES:
        return key
    accepted = sorted(internal | {"submitted", "completed", "FAILURE", "REVOKED"})
    raise ValidationError(f"unknown state {name[:40]!r}; one of: {', '.join(accepted)}")
