"""Sleep, optionally fail, optionally spawn a grandchild; print progress."""

import argparse
import os
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description="Sleep for a while.")
parser.add_argument("seconds", type=float, nargs="?", default=1.0)
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--grandchild", action="store_true", help="start a detached sleeping child")
parser.add_argument("--touch", help="file to create when the sleep ends")
args = parser.parse_args()
if args.grandchild:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    with open("grandchild.pid", "w") as handle:
        handle.write(str(child.pid))
print(f"pid {os.getpid()} sleeping {args.seconds}", flush=True)
time.sleep(args.seconds)
if args.touch:
    with open(args.touch, "w") as handle:
        handle.write("done\n")
print("awake", flush=True)
print("to stderr", file=sys.stderr)
sys.exit(args.exit_code)
