#!/usr/bin/env python
"""Hostile uploads against a real daemon: the figures of issue #10, items 2 and 3.

1. **Cut-off uploads**: ``--truncated`` (10,000) multipart POSTs that declare
   5 MB and hang up after 1 kB, ``--concurrency`` (20) at a time, spread over the
   upload paths a body can take: job_files without a key (the issue's case),
   job_files with a form key (held in memory), job_files with the key in the
   query (streamed to the staging area) and the authenticated Wooey submit.
   The daemon's RSS is read after a warm-up of ``--warmup`` (2,000) of the same
   requests and after the measured ones, once every handler has ended (no file
   left in ``<data_dir>/tmp``, the descriptor count back). Target: within 5 MiB.
   Clients that hang up at once never wait for the daemon, so on a busy machine
   hundreds of their connections can queue at it, and RSS keeps that backlog's
   high-water mark (allocator pages, not live objects: it does not grow further).
   Clients therefore wait while the daemon holds more than ``--max-in-flight``
   (64) connections above idle; ``--max-in-flight 0`` measures without that.
2. **Anonymous uploads**: ``--anonymous`` (1,000) unauthenticated uploads over
   every upload route of both faces (64 KiB bodies; keyless, wrong key in the
   form or the query, oversized, chunked; Wooey submit and add-or-update; Galaxy
   tool run). Measured: the bytes the daemon passed to write(2) (``/proc/PID/io``
   wchar) and the disk space of the data directory's files, peak sampled every
   5 ms. Target: nothing stored (under 64 KiB written, log lines included).

The reference, on the same daemon in the same run: RSS growth over as many
complete requests (the anonymous mix, every one answered), i.e. what the
allocator settles to without any cut-off connection.

A real ``jobferry serve`` on a temporary data directory (SQLite), stopped by pid
at the end, also on error or Ctrl-C. Usage::

    .venv/bin/python bench/faults_uploads.py [--truncated 10000] [--anonymous 1000]

Prints the figures and exits 0 when both targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.faults._upload_clients import (  # noqa: E402
    MIB,
    Sampler,
    open_descriptors,
    rss,
    send_all,
    written_chars,
)
from tests.faults.test_anonymous_uploads import anonymous_mix  # noqa: E402
from tests.faults.test_truncated_uploads import files_below, truncated_mix  # noqa: E402
from tests.helpers import JOB_SCRIPTS, DaemonProcess, eventually  # noqa: E402

RSS_TARGET = 5 * MIB
WRITE_TARGET = 64 * 1024


def disk_used(directory: Path) -> int:
    """Bytes allocated to the files below *directory* (its filesystem is shared)."""
    total = 0
    for top, _, names in os.walk(directory):
        for name in names:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def settle(daemon: DaemonProcess, fds: int) -> None:
    """Wait (60 s at most) until every cut-off request's handler has ended."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    eventually(lambda: not files_below(daemon.data_dir / "tmp"), 60)
    eventually(lambda: psutil.Process(pid).num_fds() <= fds + 5, 60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truncated", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--anonymous", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=64,
        help="clients wait while the daemon holds more connections than this above idle "
        "(0: no limit; RSS then includes the high-water mark of its backlog)",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the reference (RSS over as many complete requests)",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="jobferry-faults-uploads-"))
    daemon = DaemonProcess(base / "data", {"server": {"max_upload_mb": 64}})
    ok = True
    try:
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        admin = daemon.client()
        admin.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
        job_id = admin.submit("sleeper", "3600")
        key = daemon.cli("job", "key", job_id).stdout.strip()
        host, port = daemon.url.split("//")[1].rsplit(":", 1)
        address = (host, int(port))

        fds = psutil.Process(pid).num_fds()
        descriptors = open_descriptors(pid)
        limit = args.max_in_flight

        def held() -> int:  # connections (and files) the daemon holds above idle
            return descriptors() - fds

        queued = held if limit else None
        send_all(address, truncated_mix(daemon.admin_key, job_id, key, args.warmup), 20, queued)
        settle(daemon, fds)
        before = rss(pid)
        started = time.monotonic()
        mix = truncated_mix(daemon.admin_key, job_id, key, args.truncated)
        send_all(address, mix, args.concurrency, queued, limit)
        settle(daemon, fds)
        after = rss(pid)
        took = time.monotonic() - started
        grown = after - before
        ok &= grown <= RSS_TARGET
        print(
            f"cut-off uploads: {args.truncated} in {took:.1f} s; RSS {before / MIB:.1f} MiB -> "
            f"{after / MIB:.1f} MiB ({grown / MIB:+.2f} MiB; target within "
            f"{RSS_TARGET / MIB:.0f} MiB)"
        )

        if args.reference:
            # Reference, same daemon and run: RSS over as many complete (answered) requests.
            before = rss(pid)
            send_all(
                address, anonymous_mix(job_id, args.truncated), args.concurrency, queued, limit
            )
            settle(daemon, fds)
            grown = rss(pid) - before
            print(
                f"reference: {args.truncated} complete requests; RSS {before / MIB:.1f} MiB -> "
                f"{(before + grown) / MIB:.1f} MiB ({grown / MIB:+.2f} MiB)"
            )
        if args.anonymous:
            send_all(address, anonymous_mix(job_id, 80))  # warm up
            wrote_before = written_chars(pid)
            with Sampler(lambda: disk_used(daemon.data_dir)) as disk:
                statuses = send_all(
                    address, anonymous_mix(job_id, args.anonymous), args.concurrency
                )
            wrote = written_chars(pid) - wrote_before
            ok &= wrote <= WRITE_TARGET
            print(
                f"anonymous uploads: {args.anonymous} ({64 * args.anonymous // 1024} MiB of "
                f"bodies offered); daemon wrote {wrote} bytes; "
                f"disk peak {disk.peak - disk.first:+d} bytes; "
                f"statuses {dict(sorted(statuses.items(), key=str))}"
            )
        daemon.cli("job", "cancel", job_id, check=False)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop(60)
        for process in psutil.process_iter():  # the sleeper job, if the cancel did not end it
            try:
                if (process.cwd() + os.sep).startswith(str(base) + os.sep):
                    process.kill()
            except psutil.Error:
                pass
        shutil.rmtree(base, ignore_errors=True)
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
