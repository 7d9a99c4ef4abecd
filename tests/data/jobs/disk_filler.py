"""Write more than the disk holds (ignoring "disk full"), then exit with a given code.

The fault suite runs it on a small filesystem: the job fills the disk its daemon's
data directory (and store) live on.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description="Fill the disk, then exit.")
parser.add_argument("--mb", type=int, default=30, help="megabytes to try to write")
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--go", help="wait until this file exists before writing")
args = parser.parse_args()
print(f"pid {os.getpid()} filling", flush=True)
while args.go and not os.path.exists(args.go):
    time.sleep(0.05)
written = 0
try:
    with open("big.out", "wb", buffering=0) as out:
        for _ in range(args.mb):
            written += out.write(b"\1" * (1 << 20))
except OSError as exc:
    try:
        print(f"stopped after {written} bytes: {exc}", file=sys.stderr, flush=True)
    except OSError:
        pass
# Not sys.exit: flushing at shutdown could fail on the full disk and change the code.
os._exit(args.exit_code)
