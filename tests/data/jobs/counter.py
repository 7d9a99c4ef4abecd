"""Append this job's id to a log file, then sleep: counts how often each job ran."""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description="Record a run, then sleep.")
parser.add_argument("--log", required=True, help="absolute path of the shared run log")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--touch", help="file to create when the sleep ends")
parser.add_argument("--gate", help="wait until this file exists before sleeping")
args = parser.parse_args()
with open(args.log, "a") as handle:
    handle.write(os.environ.get("JOBFERRY_JOB_ID", "?") + "\n")
print(f"pid {os.getpid()} sleeping {args.sleep}", flush=True)
while args.gate and not os.path.exists(args.gate):
    time.sleep(0.05)  # the test opens the gate when its scenario is ready
time.sleep(args.sleep)
if args.touch:
    with open(args.touch, "w") as handle:
        handle.write("done\n")
print("awake", flush=True)
sys.exit(args.exit_code)
