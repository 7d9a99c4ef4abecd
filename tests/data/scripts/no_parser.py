"""A script that never builds an argparse parser."""

import sys

print("hello", sys.argv)
