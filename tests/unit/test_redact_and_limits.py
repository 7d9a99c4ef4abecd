"""Log redaction and the failure limiter, in isolation (the e2e tests drive them through
a daemon). Each test names the failure it guards."""

from __future__ import annotations

import logging
import sys

import pytest

from jobferry.daemon.redact import RedactingFilter, redact
from jobferry.errors import TooManyRequestsError
from jobferry.services.ratelimit import FailureLimiter

pytestmark = pytest.mark.engine_independent

KEY = "jf_" + "Ab3_-" * 9
JOB_KEY = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "line",
    [
        f"Malformed HTTP message from 127.0.0.1: Invalid header value 'Bearer {KEY}\\x01'",
        f"Invalid header value '{KEY}\\x7f'",
        f"GET /api/whoami?key={KEY}&x=1",
        f"GET /api/jobs/x/files?path=a&job_key={JOB_KEY}",
        f"env {{'JOBFERRY_JOB_KEY': '{JOB_KEY}'}}",
        f'{{"api_key": "{KEY}"}}',
        "Authorization: Basic YWxpY2U6c2VjcmV0LXB3",
        "password=hunter22 and more",
        f"bare {JOB_KEY} job key",
    ],
)
def test_redact__blanks_every_form_of_secret(line: str) -> None:
    """Guards: a key, job_key or password in any log line (Tornado's included)."""
    cleaned = redact(line)
    for secret in (KEY, KEY[3:], JOB_KEY, "YWxpY2U6c2VjcmV0LXB3", "hunter22"):
        assert secret not in cleaned
    assert "***" in cleaned


def test_redact__leaves_ordinary_text_alone() -> None:
    line = "200 GET /api/jobs/0123456789abcdef (127.0.0.1) 3.2ms; monkey=3; keys: 4"
    assert redact(line) == line


def test_filter__redacts_arguments_and_tracebacks() -> None:
    """Guards: a secret passed as a %-argument or quoted in an exception's message."""
    logger = logging.getLogger("test.redact")
    try:
        raise ValueError(f"bad header 'Bearer {KEY}'")
    except ValueError:
        record = logger.makeRecord(
            "test.redact", logging.ERROR, __file__, 1, "key %s", (KEY,), exc_info=True
        )
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert KEY not in text and "jf_***" in text


def test_failure_limiter__holds_back_past_the_limit_then_forgets_with_time() -> None:
    """Guards: unlimited password guessing (each failure was only delayed)."""
    now = [1000.0]
    limiter = FailureLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("user:a", "addr:1")
        limiter.failed("user:a", "addr:1")
        now[0] += 1
    with pytest.raises(TooManyRequestsError) as caught:
        limiter.check("user:a")
    assert caught.value.retry_after == 57  # now 1003; the first failure leaves at 1060
    with pytest.raises(TooManyRequestsError):
        limiter.check("user:b", "addr:1")  # the address too
    limiter.check("user:b", "addr:2")  # others are not held back
    now[0] = 1060.0
    limiter.check("user:a")  # the first failure has left the window
    limiter.forget("addr:1")
    limiter.check("addr:1")


def test_failure_limiter__keeps_a_bounded_number_of_keys() -> None:
    """Guards: made-up user names growing the limiter's memory without bound."""
    limiter = FailureLimiter(3, 60.0, max_keys=100)
    for n in range(1000):
        limiter.failed(f"user:{n}")
    assert len(limiter._failures) == 100
