"""Do nothing (for throughput measurements)."""

import argparse

argparse.ArgumentParser(description="Does nothing.").parse_args()
