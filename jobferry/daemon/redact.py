"""No log line carries a secret: API keys, job_keys, passwords, Basic credentials.

Our own log calls already blank keys in URLs (``api.base.scrub``), but Tornado's
do not: a malformed header is logged as ``Malformed HTTP message ...: 'Bearer
jf_...'``, and a traceback can quote a request. So every record is redacted on its
way out, by a filter on the root logger's handlers (a filter on a logger would
miss records propagated from child loggers such as ``tornado.general``).
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Our API keys, wherever they appear.
    (re.compile(r"jf_[A-Za-z0-9_\-]+"), "jf_" + MASK),
    # Authorization credentials of any scheme we accept (Bearer, Basic).
    (re.compile(r"\b(Bearer|Basic)(\s+|%20|\+)[^\s'\",;&]+", re.IGNORECASE), r"\1\2" + MASK),
    # key=..., job_key=..., api_key=..., password=... (query strings, forms, reprs).
    (
        re.compile(
            r"((?:\b|_)(?:job_key|api_key|x-api-key|key|password|secret)['\"]?\s*[=:]\s*['\"]?)"
            r"[^\s'\"&,;}]+",
            re.IGNORECASE,
        ),
        r"\1" + MASK,
    ),
    # A job_key is a 64-hex-digit HMAC; blank any such token (checksums too, harmlessly).
    (re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])"), MASK),
]


#: What each pattern above needs to match at all: one of these words (in any case),
#: or 64 hex digits. A line with none of them (most lines, e.g. a job's start and
#: end) is spared the four substitutions. Keep these a superset of the patterns.
_WORDS = ("jf_", "bearer", "basic", "key", "password", "secret")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{64}")


def redact(text: str) -> str:
    """*text* with every secret it may contain replaced by ``***``."""
    lower = text.lower()
    if not any(word in lower for word in _WORDS) and _HEX_RUN.search(text) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback text) with secrets blanked."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it; leave as is
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(root: logging.Logger | None = None) -> None:
    """Put a RedactingFilter on every handler of the root logger (once each)."""
    root = root or logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
