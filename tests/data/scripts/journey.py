"""The browser journey's script: a file, a choice and a go-ahead file.

It prints a line, waits (at most --patience s) until the --go file exists, so a
browser can watch it run, then writes result.txt: the input in the chosen case.
"""

import argparse
import os
import time

parser = argparse.ArgumentParser(description="Change the case of a text file, when told to.")
parser.add_argument("text", type=argparse.FileType("r"), help="The text file to change.")
parser.add_argument("--case", choices=["upper", "lower", "swap"], default="lower")
parser.add_argument("--go", help="Wait until this file exists before finishing.")
parser.add_argument("--patience", type=float, default=120.0, help="The longest wait, s.")
args = parser.parse_args()

text = args.text.read()
print(f"started: {len(text)} characters, case {args.case}", flush=True)
if args.go:
    deadline = time.monotonic() + args.patience
    while not os.path.exists(args.go) and time.monotonic() < deadline:
        time.sleep(0.05)
changed = {"upper": str.upper, "lower": str.lower, "swap": str.swapcase}[args.case](text)
with open("result.txt", "w") as handle:
    handle.write(changed)
print("finished", flush=True)
