"""A script that starts a child process and sleeps before parse_args().

It records its own pid and its child's pid next to itself so the test can
check that both are gone after the timeout.
"""

import argparse
import os
import subprocess
import sys
import time

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "pids.txt"), "w") as out:
    out.write(f"{os.getpid()} {child.pid}\n")
time.sleep(1000)
argparse.ArgumentParser().parse_args()
