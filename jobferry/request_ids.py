"""Request ids, face-neutral: the ``REQUEST_ID`` context variable and choosing an id;
and the random bytes every fresh id of the process is made of (``fresh_hex``).

Every request gets an id: a sane ``X-Request-Id`` a proxy sent
(``[A-Za-z0-9._-]{1,64}``), else 16 fresh hex digits (``fresh_hex``), chosen
once per request (``request_id``) and kept on it. Both HTTP faces send it back as
``X-Request-Id`` on every answer (``api/base.py``, ``web/base.py``), and
``api.access_log.RequestIdApplication`` sets ``REQUEST_ID`` around each request's
delegate, so every line logged while serving it carries the id
(``daemon.logformat``). It lives here, below both faces, because ``web`` may not
import ``api``.

**Fresh ids** (``fresh_hex``, ``fresh_uuid4``): the request id, and through
``store.models.new_id`` every row id (a job and each of its files), came from one
``secrets.token_hex`` call each: one ``getrandom`` system call per id, three or
four per submission, which a py-spy profile of the acceptance benchmark showed.
The bytes are now the same kernel CSPRNG's (``os.urandom``), only read
``_BLOCK`` bytes at a time into a per-thread buffer and handed out in order, each
byte once. So an id is exactly as unguessable and as unique as before (64 bits
from ``os.urandom``, across nodes and restarts alike: nothing is derived from a
seed, a counter or the clock), not a seeded PRNG's output; what is saved is the
system call. The buffer is per thread (no lock; two threads never share bytes),
and a forked child drops what it inherited (``os.register_at_fork``), so parent
and child never hand out the same bytes.
"""

from __future__ import annotations

import os
import re
import threading
from contextvars import ContextVar

import tornado.httputil

#: The id of the request being served in this context (None: no request).
REQUEST_ID: ContextVar[str | None] = ContextVar("jobferry_request_id", default=None)
HEADER = "X-Request-Id"
#: An incoming id we keep: what a proxy (nginx's $request_id, a UUID) sends.
SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: The attribute of the HTTPServerRequest that holds its id.
_ATTR = "jobferry_request_id"

#: Bytes read from the kernel at a time (512 ids of 8 bytes).
_BLOCK = 4096


class _Entropy(threading.local):
    """This thread's unread random bytes (hex) and where the next id starts."""

    hex: str = ""
    pos: int = 0
    generation: int = -1


_entropy = _Entropy()
#: Bumped in a forked child: every thread's buffer from before the fork is dropped.
_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def fresh_hex(nbytes: int = 8) -> str:
    """*nbytes* fresh random bytes from the kernel CSPRNG, as 2 x *nbytes* lower-case
    hex digits: what ``secrets.token_hex(nbytes)`` returns, without a system call per
    id (see the module docstring)."""
    state = _entropy
    width = 2 * nbytes
    start = state.pos
    if state.generation != _generation or start + width > len(state.hex):
        state.hex = os.urandom(max(_BLOCK, nbytes)).hex()
        state.generation = _generation
        start = 0
    state.pos = start + width
    return state.hex[start : start + width]


def fresh_uuid4() -> str:
    """A random (version 4, RFC 4122 variant) UUID in its string form, from
    ``fresh_hex``: what ``str(uuid.uuid4())`` returns, without its system call."""
    h = fresh_hex(16)
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def request_id(request: tornado.httputil.HTTPServerRequest) -> str:
    """*request*'s id: chosen once (the proxy's if sane, else a new one), then kept."""
    found: str | None = getattr(request, _ATTR, None)
    if found is None:
        incoming = request.headers.get(HEADER)
        found = incoming if incoming and SANE_ID.fullmatch(incoming) else fresh_hex(8)
        setattr(request, _ATTR, found)
    return found
