"""Record each run's start and end (job id, attempt, pid, time) in a shared log, then sleep.

Lines: ``start <job> <attempt> <pid> <time>`` and ``end <job> <attempt> <pid> <time>``.
A run killed with its node has a start and no end.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description="Record a run's start and end, sleep in between.")
parser.add_argument("--log", required=True, help="absolute path of the shared run log")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail-attempt", type=int, default=0, help="exit 3 on this attempt")
parser.add_argument(
    "--gate", help="on the failing attempt, wait until this file exists before sleeping"
)
args = parser.parse_args()
job = os.environ.get("JOBFERRY_JOB_ID", "?")
attempt = int(os.environ.get("JOBFERRY_ATTEMPT", "0"))


def record(what: str) -> None:
    with open(args.log, "a") as handle:
        handle.write(f"{what} {job} {attempt} {os.getpid()} {time.time():.3f}\n")


record("start")
print(f"pid {os.getpid()} sleeping {args.sleep}", flush=True)
while args.gate and attempt == args.fail_attempt and not os.path.exists(args.gate):
    time.sleep(0.05)  # the test opens the gate when its scenario is ready
time.sleep(args.sleep)
record("end")
sys.exit(3 if attempt == args.fail_attempt else 0)
