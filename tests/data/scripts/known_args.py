"""A script that reads its arguments with parse_known_args()."""

import argparse

parser = argparse.ArgumentParser(description="Tolerates extra arguments.")
parser.add_argument("--config", help="A configuration name.")
parser.version = "0.9"
args, rest = parser.parse_known_args()
