"""Record when this job's command started, then end (the job of bench/runners.py).

The first statement takes the time (epoch seconds, the host's clock: local
processes, containers and Slurm jobs of this machine share it); it is written
to ``started.txt`` in the working directory once the arguments are parsed.
"""

import time

STARTED = time.time()

import argparse  # noqa: E402  (after the timestamp on purpose)

argparse.ArgumentParser(description="Records when it started.").parse_args()
with open("started.txt", "w") as handle:
    handle.write(f"{STARTED!r}\n")
