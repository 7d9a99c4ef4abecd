"""Behave as told: write files, record where it ran, allocate memory, sleep, exit.

The runner contract suite runs this same script on every runner and compares.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description="A job that does what it is told.")
parser.add_argument("-i", "--infile", type=argparse.FileType("r"), help="input to copy")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--alloc-mb", type=int, default=0, help="memory to allocate and touch")
parser.add_argument("--exit-code", type=int, default=0)
args = parser.parse_args()
with open("runs.txt", "a") as handle:  # one line per run: a rerun would show
    handle.write(f"{os.environ.get('JOBFERRY_JOB_ID', '?')}\n")
with open("where.txt", "w") as handle:
    handle.write(os.getcwd() + "\n")
if args.infile:
    text = args.infile.read()
    with open("copy.txt", "w") as handle:
        handle.write(text)
    os.makedirs("sub", exist_ok=True)
    with open("sub/count.txt", "w") as handle:
        handle.write(f"{len(text.split())}\n")
print(f"pid {os.getpid()} uid {os.getuid()} sleeping {args.sleep}", flush=True)
if args.alloc_mb:
    blocks = [bytearray(1024 * 1024) for _ in range(args.alloc_mb)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])
time.sleep(args.sleep)
print("done", flush=True)
print("to stderr", file=sys.stderr)
sys.exit(args.exit_code)
