"""The job-state vocabulary the faces speak from: the store's states, re-exported.

Faces (``jobferry.api``, ``jobferry.cli``) never import the store; what they
need of its state machine (the states, and which of them are final) they take
from here. Each face's own names for the states live in its package
(``jobferry.api.wooey.serialize``); reading any face's names back is
``jobferry.services.states``.
"""

from __future__ import annotations

from jobferry.store.models import ACTIVE_STATES, TERMINAL_STATES, JobState

__all__ = ["ACTIVE_STATES", "TERMINAL_STATES", "TERMINAL_VALUES", "JobState"]

#: The final states as stored (strings), for comparing with records' ``state``.
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATES)
