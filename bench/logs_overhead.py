#!/usr/bin/env python
"""What logging costs per request: the access log off, on (text), on (JSON).

Three real ``jobferry serve`` daemons, alike but for ``logging`` (INFO; the
first with ``access_log: false``, the reference), are requested in turn, request by
request, so that other work on the machine hits all three alike:
``GET /api/scripts/v1/list/`` (authenticated, a worker-thread hop: a typical API
request) and ``GET /healthz`` (the cheapest answer), over one keep-alive
connection each. Printed: median and p99 per request and the ratio to the
reference. Also measured in this process: the request id's own cost per request
(``api.access_log``: choosing the id, the delegate wrapper, its context-variable
sets), next to the reference's median request.

Usage::

    .venv/bin/python bench/logs_overhead.py [--requests 2000]

Daemons are stopped by pid at the end (also on error or Ctrl-C).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from pathlib import Path

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tornado.httputil

from bench.common.daemons import Daemon, bench_run, key_session
from bench.common.report import fmt, log, table
from jobferry.api.access_log import REQUEST_ID, _InRequest, request_id

CONFIGS = {
    "access log off (reference)": {"level": "INFO", "access_log": False},
    "access log on, text": {"level": "INFO", "access_log": True, "format": "text"},
    "access log on, json": {"level": "INFO", "access_log": True, "format": "json"},
}
PATHS = ("/api/scripts/v1/list/", "/healthz")


def request_id_cost_us(n: int = 200_000) -> float:
    """Microseconds the request id adds to one request (in this process)."""
    headers = tornado.httputil.HTTPHeaders({"Host": "x"})
    delegate = tornado.httputil.HTTPMessageDelegate()
    start = tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1")

    def one() -> None:
        request = tornado.httputil.HTTPServerRequest(start_line=start, headers=headers)
        wrapped = _InRequest(delegate, request_id(request))
        for _ in range(2):  # headers_received and finish, at least
            token = REQUEST_ID.set(wrapped._id)
            REQUEST_ID.reset(token)
        request_id(request)  # the header's second look-up

    def bare() -> None:
        tornado.httputil.HTTPServerRequest(start_line=start, headers=headers)

    with_id = min(timeit.repeat(one, number=n, repeat=3)) / n
    without = min(timeit.repeat(bare, number=n, repeat=3)) / n
    return (with_id - without) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per daemon and path")
    args = parser.parse_args()
    with bench_run("logs-overhead") as run:
        daemons = {}
        for number, (name, logging) in enumerate(CONFIGS.items()):
            daemon = Daemon(f"d{number}", run.workdir, {"logging": logging}).start()
            daemons[name] = (daemon, key_session(daemon.key))
        times: dict[tuple[str, str], list[float]] = {(n, p): [] for n in CONFIGS for p in PATHS}
        for daemon, session in daemons.values():  # warm-up
            for path in PATHS:
                for _ in range(50):
                    session.get(daemon.url + path, timeout=30).raise_for_status()
        # Interleaved request by request: other work on the machine hits all alike.
        for number in range(args.requests):
            if number % max(1, args.requests // 10) == 0:
                log(f"request {number}/{args.requests}")
            for name, (daemon, session) in daemons.items():
                for path in PATHS:
                    t0 = time.perf_counter()
                    session.get(daemon.url + path, timeout=30).raise_for_status()
                    times[name, path].append(time.perf_counter() - t0)
        reference = next(iter(CONFIGS))
        rows = []
        for path in PATHS:
            ref = statistics.median(times[reference, path])
            for name in CONFIGS:
                values = sorted(times[name, path])
                median = statistics.median(values)
                p99 = values[int(0.99 * (len(values) - 1))]
                rows.append(
                    [path, name, fmt(median * 1e3, "ms"), fmt(p99 * 1e3, "ms"),
                     f"{median / ref:.3f}"]
                )  # fmt: skip
        print(table(["path", "daemon", "median", "p99", "median / reference"], rows))
        cost = request_id_cost_us()
        ref_list = statistics.median(times[reference, PATHS[0]]) * 1e6
        print(
            f"request id, per request: {cost:.2f} us "
            f"({100 * cost / ref_list:.2f} % of the reference's median {PATHS[0]})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
