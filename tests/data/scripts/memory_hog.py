"""A script that allocates a huge amount of memory at top level."""

import argparse

blob = bytearray(8 * 1024**3)
argparse.ArgumentParser().parse_args()
