#!/usr/bin/env python
"""Other clients' status polls while oversized commands are being validated.

Issue #10, item 5: a ``command`` of thousands of repeated flags kept a worker
thread (and the GIL) busy for seconds to minutes, and every other client's
requests slowed down. This bench starts a real ``jobferry serve``, measures
the latency of back-to-back Wooey status polls of one job with the daemon
otherwise idle, and while ATTACKERS client processes keep submitting
commands of nearly ``scripts.max_command_tokens`` tokens that argparse must
parse completely (its worst case: ``append_const`` flags) and that fail
validation at the very end (so no job is created). Both figures come from the
same run, on the same daemon, in alternating windows (attackers paused with
SIGSTOP for the idle ones), so the machine's other work weighs on both alike.

Usage::

    .venv/bin/python bench/validation_load.py [--attackers 4] [--seconds 30] [--rounds 3]
        [--tokens 1990] [--keep]

Target: loaded p99 <= 2 x idle p99. Exit status 0 when met, 1 otherwise.
Standard library + requests. Every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: bench/ is sys.path[0], the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common.daemons import Daemon, bench_run, daemon_env, key_session
from bench.common.report import ROOT
from bench.common.stats import nearest_rank

SCRIPT = ROOT / "tests" / "data" / "scripts" / "all_actions.py"
SLUG = "all-actions"
#: Target of the issue: loaded p99 within this factor of the idle p99.
TARGET_RATIO = 2.0
#: Pause between two polls of the measuring client, seconds.
POLL_GAP_S = 0.005
#: Wait after pausing or resuming the attackers before polling again, seconds.
SETTLE_S = 2.0


def oversized_command(tokens: int) -> str:
    """Valid up to its last token: argparse parses it all, then a choice fails (400)."""
    head = "--name bob data 5"
    return head + " --mark" * (tokens - 6) + " --level 9"


def poll(url: str, key: str, job_id: str, seconds: float, at_least: int = 200) -> list[float]:
    """Latencies (s) of back-to-back status polls for *seconds* (and at least *at_least*)."""
    session = key_session(key)
    target = f"{url}/api/jobs/v1/{job_id}/status/"
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(latencies) < at_least:
        started = time.perf_counter()
        response = session.get(target, timeout=60)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        time.sleep(POLL_GAP_S)
    return latencies


def attack(url: str, key: str, tokens: int, log: Path) -> None:
    """One attacker (its own process): submit oversized commands until killed."""
    session = key_session(key)
    command = oversized_command(tokens)
    with open(log, "a", buffering=1) as out:
        while True:
            started = time.perf_counter()
            response = session.post(
                f"{url}/api/scripts/v1/{SLUG}/submit/",
                data={"job_name": "attack", "command": command},
                files={"data": ("d.txt", b"x")},
                timeout=600,
            )
            took = time.perf_counter() - started
            out.write(json.dumps({"status": response.status_code, "s": round(took, 4)}) + "\n")
            if response.status_code == 429:
                time.sleep(float(response.headers.get("Retry-After", "1")))


@contextmanager
def attackers(
    url: str, key: str, count: int, tokens: int, workdir: Path
) -> Iterator[tuple[list[Path], list[subprocess.Popen[bytes]]]]:
    """*count* attacker processes, running until the block ends (stopped by pid)."""
    logs = [workdir / f"attacker-{i}.jsonl" for i in range(count)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "attack", url, key, str(tokens)]
            + [str(log)],
            env=daemon_env(),
        )
        for log in logs
    ]
    try:
        yield logs, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _signal_all(procs: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signum)


def responses(logs: Sequence[Path]) -> list[dict[str, Any]]:
    found = []
    for log in logs:
        if log.exists():
            found += [json.loads(line) for line in log.read_text().splitlines() if line]
    return found


def measure(
    url: str,
    key: str,
    job_id: str,
    workdir: Path,
    *,
    count: int = 4,
    tokens: int = 1990,
    seconds: float = 20.0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Status-poll latencies idle and while *count* attackers run; the figures as a dict.

    Idle and loaded windows alternate (*rounds* of each, *seconds* of loaded polling
    in all), so that the machine's other work disturbs both alike: the attackers are
    paused (SIGSTOP) for the idle windows, and polling starts only once the daemon
    has answered what they had sent (a check takes well under SETTLE_S).
    """
    idle: list[float] = []
    loaded: list[float] = []
    window = seconds / rounds
    with attackers(url, key, count, tokens, workdir) as (logs, procs):
        deadline = time.monotonic() + 120
        while len(responses(logs)) < count and time.monotonic() < deadline:
            time.sleep(0.1)  # every attacker is in its stride (first answers seen)
        before = len(responses(logs))
        for _ in range(rounds):
            _signal_all(procs, signal.SIGSTOP)
            time.sleep(SETTLE_S)
            idle += poll(url, key, job_id, window / 2, at_least=50)
            _signal_all(procs, signal.SIGCONT)
            time.sleep(SETTLE_S)
            loaded += poll(url, key, job_id, window, at_least=50)
        seen = responses(logs)
    during = seen[before:]
    statuses = Counter(str(r["status"]) for r in during)
    checked = [r["s"] for r in during if r["status"] == 400]
    result: dict[str, Any] = {
        "attackers": count,
        "tokens": tokens,
        "rounds": rounds,
        "idle_polls": len(idle),
        "idle_p50_ms": round(statistics.median(idle) * 1000, 2),
        "idle_p99_ms": round(nearest_rank(idle, 99) * 1000, 2),
        "loaded_polls": len(loaded),
        "loaded_p50_ms": round(statistics.median(loaded) * 1000, 2),
        "loaded_p99_ms": round(nearest_rank(loaded, 99) * 1000, 2),
        "attack_statuses": dict(statuses),
        "attack_check_s_median": round(statistics.median(checked), 3) if checked else None,
    }
    result["ratio_p99"] = round(result["loaded_p99_ms"] / result["idle_p99_ms"], 2)
    return result


def prepare(url: str, key: str) -> str:
    """Register the script and submit one small job; its id is what gets polled."""
    session = key_session(key)
    with open(SCRIPT, "rb") as handle:
        added = session.post(
            f"{url}/api/scripts/v1/add-or-update/", files={SLUG: handle}, timeout=120
        )
    assert added.status_code == 200 and added.json()[0]["success"], added.text
    submitted = session.post(
        f"{url}/api/scripts/v1/{SLUG}/submit/",
        data={"job_name": "polled", "command": "--name bob data 5"},
        files={"data": ("d.txt", b"x")},
        timeout=120,
    )
    assert submitted.status_code == 200 and submitted.json()["valid"], submitted.text
    return str(submitted.json()["job_id"])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["attack"]:
        attack(args[1], args[2], int(args[3]), Path(args[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1990, help="tokens per oversized command")
    parser.add_argument("--seconds", type=float, default=30.0, help="loaded polling time")
    parser.add_argument("--rounds", type=int, default=3, help="idle/loaded alternations")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(args)
    with bench_run("jobferry-validation-load-", options.keep) as run:
        daemon = Daemon("data", run.workdir).start()
        job_id = prepare(daemon.url, daemon.key)
        result = measure(
            daemon.url,
            daemon.key,
            job_id,
            run.workdir,
            count=options.attackers,
            tokens=options.tokens,
            seconds=options.seconds,
            rounds=options.rounds,
        )
    print(json.dumps(result, indent=2))
    print(
        f"status p99: idle {result['idle_p99_ms']} ms, with {options.attackers} oversized "
        f"commands being validated {result['loaded_p99_ms']} ms "
        f"(ratio {result['ratio_p99']}, target <= {TARGET_RATIO})"
    )
    return 0 if result["ratio_p99"] <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
