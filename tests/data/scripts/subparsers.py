"""A script with subcommands, which jobferry refuses."""

import argparse

parser = argparse.ArgumentParser()
commands = parser.add_subparsers(dest="command")
commands.add_parser("start").add_argument("--fast", action="store_true")
commands.add_parser("stop")
parser.parse_args()
