"""A job with long logs: a first line, --mb MiB of filler and a last line, on stdout
and then on stderr; exits with --exit-code."""

import argparse
import sys

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--mb", type=int, default=3, help="MiB of filler per stream")
parser.add_argument("--exit-code", type=int, default=0)
args = parser.parse_args()
block = b"0123456789abcde\n" * 65536  # 1 MiB
for stream, tag in ((sys.stdout.buffer, b"OUT"), (sys.stderr.buffer, b"ERR")):
    stream.write(b"FIRST-" + tag + b"\n")
    for _ in range(args.mb):
        stream.write(block)
    stream.write(b"LAST-" + tag + b"\n")
    stream.flush()
sys.exit(args.exit_code)
