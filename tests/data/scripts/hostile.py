"""A script whose top-level code has side effects.

It writes a marker into the current directory, leaves traces in the
interpreter, and tries to record where it ran and what it saw next to itself
(a confined probe cannot: the script's directory is read-only to it).
"""

import argparse
import builtins
import json
import os

with open("HOSTILE_MARKER", "w") as marker:
    marker.write("ran here\n")
builtins.JOBFERRY_HOSTILE = True
os.environ["JOBFERRY_HOSTILE"] = "1"
here = os.path.dirname(os.path.abspath(__file__))
try:
    with open(os.path.join(here, "ran.json"), "w") as out:
        json.dump({"pid": os.getpid(), "cwd": os.getcwd(), "env": sorted(os.environ)}, out)
except OSError:
    pass

parser = argparse.ArgumentParser(description="Looks harmless.")
parser.add_argument("--name")
parser.parse_args()
