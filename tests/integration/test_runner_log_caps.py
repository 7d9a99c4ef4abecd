"""The log cap (``RunSpec.max_log_bytes``, config ``jobs.max_log_mb``) on every runner
that runs programs: local, Docker (a busybox image without python3) and Slurm.

The wrapper keeps a capped log's first and last halves with one marker line between
them that states exactly how many bytes were dropped; a log within the cap is kept
byte for byte; the job's exit code stays its own; a runaway writer that is cancelled
leaves a log no larger than the cap and its marker. Remote staging goes through the
same wrapper: ``tests/e2e/test_runner_contract.py`` checks it through a daemon.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobferry.runners.base import RunState
from tests.helpers import wait_for
from tests.integration.runner_kinds import KINDS, LOG_CAP, Kind, wait

pytestmark = [pytest.mark.timeout(300), pytest.mark.engine_independent]

MARKER = re.compile(rb"\n\[jobferry: (\d+) bytes dropped here; [^\n]*\]\n")
BIG = 20 << 20  # what the job writes between its first and last lines, per stream
#: $1 bytes of "yes" between a first and a last line, on stdout and on stderr; exit 7.
_BIG = (
    'echo FIRST-OUT; echo FIRST-ERR >&2; yes 0123456789abcdef | head -c "$1"; '
    'yes fedcba9876543210 | head -c "$1" >&2; echo LAST-OUT; echo LAST-ERR >&2; exit 7'
)


@pytest.fixture(params=[n for n in KINDS if n != "fake"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    made = KINDS[request.param](tmp_path)
    yield made
    made.close()


def _check_capped(log: bytes, first: bytes, last: bytes, written: int) -> None:
    found = MARKER.search(log)
    assert found is not None, log[:200]
    marker = found.group(0)
    assert int(found.group(1)) == written - LOG_CAP  # the exact count
    assert len(log) == LOG_CAP + len(marker)
    assert log.startswith(first) and log.endswith(last)
    assert found.start() == LOG_CAP // 2  # the head is the first half, the tail the rest


def test_log_cap__a_long_log_keeps_head_and_tail_with_the_exact_dropped_count(
    kind: Kind,
) -> None:
    runner = kind.make()
    spec = kind.spec(("/bin/sh", "-c", _BIG, "big", str(BIG)))
    status = wait(runner, runner.submit(spec))

    assert (status.state, status.exit_code) == (RunState.EXITED, 7)
    out = Path(spec.stdout_path).read_bytes()
    err = Path(spec.stderr_path).read_bytes()
    _check_capped(out, b"FIRST-OUT\n", b"LAST-OUT\n", 10 + BIG + 9)
    _check_capped(err, b"FIRST-ERR\n", b"LAST-ERR\n", 10 + BIG + 9)
    leftovers = sorted(p.name for p in Path(spec.job_dir).iterdir())
    assert not [n for n in leftovers if re.fullmatch(r"std(out|err)\.\w+", n)], leftovers


@pytest.mark.parametrize("size", [300_000, LOG_CAP], ids=["small", "exactly-the-cap"])
def test_log_cap__a_log_within_the_cap_is_kept_byte_for_byte(kind: Kind, size: int) -> None:
    runner = kind.make()
    # Random bytes (NULs, no final newline) on stdout, a copy in the work dir.
    script = 'head -c "$1" /dev/urandom > data; cat data; cat data >&2; exit 0'
    spec = kind.spec(("/bin/sh", "-c", script, "small", str(size)))
    status = wait(runner, runner.submit(spec))

    assert (status.state, status.exit_code) == (RunState.EXITED, 0)
    data = Path(spec.workdir, "data").read_bytes()
    assert len(data) == size
    assert Path(spec.stdout_path).read_bytes() == data
    assert Path(spec.stderr_path).read_bytes() == data


def test_log_cap__a_cancelled_runaway_writer_leaves_at_most_the_cap(kind: Kind) -> None:
    runner = kind.make()
    # 40 MiB first (then it says so in its work dir), then `yes` for ever.
    script = "yes | head -c 41943040; echo > passed; exec yes"
    spec = kind.spec(("/bin/sh", "-c", script, "runaway"))
    handle = runner.submit(spec)
    wait_for("the runaway job to pass 40 MiB", lambda: Path(spec.workdir, "passed").exists())
    runner.cancel(handle, "runaway")
    status = wait(runner, handle)

    assert (status.state, status.reason) == (RunState.KILLED, "runaway")
    out = Path(spec.stdout_path).read_bytes()
    found = MARKER.search(out)
    assert found is not None
    assert int(found.group(1)) >= (40 << 20) - LOG_CAP
    assert len(out) == LOG_CAP + len(found.group(0))
    assert out.startswith(b"y\ny\n") and out.endswith(b"y\n")
