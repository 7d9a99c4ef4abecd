"""A script that starts a child, which leaves the session, and sleeps before parse_args().

Both processes carry the script's path (its unique name) in their command line so
the test can check that both are gone after the timeout.
"""

import argparse
import subprocess
import sys
import time

subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(1000)", __file__])
time.sleep(1000)
argparse.ArgumentParser().parse_args()
