"""A script that fails before it reaches parse_args()."""

import argparse

parser = argparse.ArgumentParser()
raise RuntimeError("boom at import")
