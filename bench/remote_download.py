#!/usr/bin/env python
"""``jobferry remote download`` against curl, and the client's start-up, on a real daemon.

A real ``jobferry serve`` (its own data directory, stopped by pid at the end)
runs one job that writes ``--size-mb`` MiB of random bytes. That asset is then
downloaded ``--repeat`` times by ``jobferry remote download --quiet`` (which also
hashes it and checks the daemon's sha256) and by ``curl -o`` (the reference, same
route, same key, same disk), alternating; each figure is the median. The
client's start-up (``jobferry remote --help``) is timed against ``python -c
pass`` in the same run.

Usage::

    .venv/bin/python bench/remote_download.py [--size-mb 200] [--repeat 3]

The summary is printed and written to ``bench/results/remote_download-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.daemons import JOB_SCRIPTS, Daemon, bench_run, daemon_env
from bench.common.report import MB, ROOT, BenchError, log, table, write_results


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise BenchError(f"{cmd[:4]} failed: {result.stderr.strip()[:300]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    if shutil.which("curl") is None:
        raise BenchError("curl is needed for the reference")
    with bench_run("remote-download") as run:
        daemon = Daemon("daemon", run.workdir).start()
        daemon.register(JOB_SCRIPTS / "remote_job.py", "remote_job")
        env = {**daemon_env(), "JOBFERRY_URL": daemon.url, "JOBFERRY_KEY": daemon.key}
        jobferry = [sys.executable, "-m", "jobferry.cli"]
        submitted = subprocess.run(
            [
                *jobferry,
                "remote",
                "submit",
                "remote_job",
                "--wait",
                "--json",
                "--",
                "--mb",
                str(opts.size_mb),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=600,
            check=True,
        )
        details = json.loads(submitted.stdout)
        [asset] = details["assets"]
        log(f"asset {asset['name']}: {asset['size']} bytes")
        target = run.workdir / "out"
        client, curl = [], []
        for _ in range(opts.repeat):
            shutil.rmtree(target, ignore_errors=True)
            client.append(
                timed(
                    [
                        *jobferry,
                        "remote",
                        "download",
                        details["job_id"],
                        "--to",
                        str(target),
                        "--quiet",
                    ],
                    env,
                )
            )
            os.unlink(target / asset["name"])
            curl.append(
                timed(
                    [
                        "curl",
                        "-sSf",
                        "-o",
                        str(target / asset["name"]),
                        "-H",
                        f"Authorization: Bearer {daemon.key}",
                        asset["url"],
                    ],
                    env,
                )
            )
        start_client = [timed([*jobferry, "remote", "--help"], env) for _ in range(5)]
        start_python = [timed([sys.executable, "-c", "pass"], env) for _ in range(5)]
        size_mb = asset["size"] / MB
        rates = {
            "client_mb_s": size_mb / statistics.median(client),
            "curl_mb_s": size_mb / statistics.median(curl),
            "client_start_s": statistics.median(start_client),
            "python_start_s": statistics.median(start_python),
        }
        print(
            table(
                ["what", "jobferry remote", "reference", "ratio"],
                [
                    [
                        f"download {size_mb:.0f} MiB (median of {opts.repeat}), MiB/s",
                        f"{rates['client_mb_s']:.0f}",
                        f"curl {rates['curl_mb_s']:.0f}",
                        f"{rates['client_mb_s'] / rates['curl_mb_s']:.2f}",
                    ],
                    [
                        "start-up (`remote --help`, median of 5), s",
                        f"{rates['client_start_s']:.3f}",
                        f"python -c pass {rates['python_start_s']:.3f}",
                        f"{rates['client_start_s'] / rates['python_start_s']:.1f}",
                    ],
                ],
            )
        )
        path = write_results(
            "remote_download",
            run.stamp,
            {"size_mb": size_mb, **rates, "client_s": client, "curl_s": curl},
        )
        log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
