"""For ``jobferry remote``'s tests: copy an input, write a big random file, wait on a gate.

Prints ``waiting for the gate`` and blocks until the --gate file exists (a test
follows the log meanwhile), then ``through the gate``.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description="Copy, write random bytes, wait on a gate.")
parser.add_argument("-i", "--infile", type=argparse.FileType("r"), help="input to copy")
parser.add_argument("--mb", type=int, default=0, help="MiB of random bytes to write to blob.bin")
parser.add_argument("--gate", help="absolute path of a file to wait for")
parser.add_argument("--exit-code", type=int, default=0)
args = parser.parse_args()
if args.infile:
    text = args.infile.read()
    with open("copy.txt", "w") as handle:
        handle.write(text)
    print(f"copied {len(text.split())} words", flush=True)
if args.mb:
    with open("blob.bin", "wb") as handle:
        for _ in range(args.mb):
            handle.write(os.urandom(1 << 20))
    print(f"wrote {args.mb} MiB", flush=True)
if args.gate:
    print("waiting for the gate", flush=True)
    while not os.path.exists(args.gate):
        time.sleep(0.05)
    print("through the gate", flush=True)
print("to stderr", file=sys.stderr)
sys.exit(args.exit_code)
