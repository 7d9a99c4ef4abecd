"""Print the names of the job's environment variables, one a line (values stay private)."""

import argparse
import os

argparse.ArgumentParser(description="Print the names of the environment variables.").parse_args()
for name in sorted(os.environ):
    print(name)
